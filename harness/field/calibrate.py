"""Calibration: how fast this host trains the run's model, and the CPU quota that makes it as
fast as a device.

:func:`measure_host` times eager LoRA training steps (``federation.batch_size`` texts, each
filling ``model.max_length`` tokens) and soft-labelling (scoring ``run.eval_batch_size`` such
texts) at ``run.threads`` threads, the way a field client runs them, and keeps the median of a
few repeats after a warm-up. :func:`cpu_quota` compares the host's training throughput with the
device's published one (:class:`~lpfl.profiles.devices.SpeedReference`, scaled to the run's
model by parameter count): quota = host step time / device step time, in CPUs, capped to
[:data:`MIN_QUOTA`, the host's cores]. A device without a reference gets no quota.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from lpfl.config import RunConfig
from lpfl.methods import Trains
from lpfl.profiles.devices import SpeedReference
from lpfl.simulate import fresh_prompt_model
from lpfl.trainer_api import cpu_model
from lpfl.training import batch_plan, hard_example, train_steps

MIN_QUOTA = 0.05
"""The smallest quota given: below it a client spends most of each period waiting for CPU and
its timings say more about the scheduler than about a device."""


@dataclass(frozen=True)
class HostSpeed:
    """What calibration measured on this host for the run's model."""

    cpu_model: str
    threads: int
    model_params: int
    tokens_per_step: int
    train_step_s: float
    """Median seconds of one eager training step."""
    score_texts: int
    soft_label_s: float
    """Median seconds to score ``score_texts`` texts (one soft-labelling batch)."""
    repeats: int

    @property
    def train_tokens_per_s(self) -> float:
        return self.tokens_per_step / self.train_step_s


def _median_seconds(work: Callable[[], object], repeats: int) -> float:
    work()  # warm-up: first calls allocate and pick kernels
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_host(config: RunConfig, repeats: int = 3) -> HostSpeed:
    """Time the run's training step and soft-labelling batch on this host (see the module
    docstring); torch's thread count and random state are restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(config.run.threads)
    try:
        with torch.random.fork_rng():
            pm = fresh_prompt_model(config, Trains.LORA.value, seed=0)
            text = " ".join(["word"] * config.model.max_length)  # truncated to max_length
            batch = config.federation.batch_size
            tokens = int(pm.encode([text] * batch)["attention_mask"].sum())
            examples = [hard_example(text, 0, pm.num_classes)] * batch
            plan = batch_plan(examples, 1, batch, 0.0, np.random.default_rng(0))
            step_s = _median_seconds(lambda: train_steps(pm, examples, plan, 1e-4), repeats)
            texts = [text] * config.run.eval_batch_size
            score_s = _median_seconds(lambda: pm.score(texts, len(texts)), repeats)
            params = sum(p.numel() for p in pm.network.parameters())
    finally:
        torch.set_num_threads(threads)
    return HostSpeed(cpu_model(), config.run.threads, params, tokens, step_s, len(texts),
                     score_s, repeats)


def cpu_quota(host: HostSpeed, speed: SpeedReference | None,
              cores: float | None = None) -> float | None:
    """CPUs a client may use so that it trains as fast as the device; None without a
    reference (the client runs unthrottled)."""
    if speed is None:
        return None
    device_step_s = host.tokens_per_step / speed.train_tokens_per_s_for(host.model_params)
    limit = float(cores if cores is not None else os.cpu_count() or 1)
    return min(max(host.train_step_s / device_step_s, MIN_QUOTA), limit)
