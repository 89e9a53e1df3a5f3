"""The client's resource budget: refuse to start rather than be killed mid-round.

A client with ``--profile`` first takes the profile's thread count, then, before its first round,
runs one probe of its real work at its largest on its chosen backends (``run.eval_batch_size``
texts scored and one training step on ``federation.batch_size`` texts, each long enough to fill
``model.max_length`` tokens; :func:`round_probe`) and reads the process's peak resident memory.
Above the device profile's ``memory_budget_mb`` it stops with :class:`OverBudget`, whose message
names the settings that shrink the footprint. A device that runs out of memory mid-round is
killed by the kernel (or Android's low-memory killer) with no message at all; this check turns
that into an error a person can act on.

The peak is the process's high-water mark so far (:func:`lpfl.trainer_api.peak_rss_bytes`:
Linux's ``VmHWM``, else ``getrusage``), so it includes the Python runtime, torch, the model and
the loading of it: what the operating system counts against the process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lpfl.client_round import LocalClient
from lpfl.config import RunConfig
from lpfl.errors import LpflError
from lpfl.profiles.devices import load_device_profile
from lpfl.task import TaskSettings
from lpfl.trainer_api import peak_rss_bytes
from lpfl.training import batch_plan, hard_example

logger = logging.getLogger(__name__)

MIB = 2**20


class OverBudget(LpflError):
    """The client's measured peak memory exceeds its device profile's budget."""


@dataclass(frozen=True)
class Footprint:
    """What the probe measured, for the log and the hello."""

    peak_bytes: int
    budget_bytes: int

    @property
    def headroom_bytes(self) -> int:
        return self.budget_bytes - self.peak_bytes


def measure(probe: Callable[[], object]) -> int:
    """Run ``probe`` (one batch of the client's real work) and return the peak resident memory."""
    probe()
    return peak_rss_bytes()


def round_probe(client: LocalClient, batch_size: int, max_length: int) -> Callable[[], None]:
    """One batch of a round's work at its largest, on the client's chosen backends:
    ``run.eval_batch_size`` texts scored and ``batch_size`` trained for one step, each text long
    enough to fill ``max_length`` tokens.

    The trainer's state and torch's random state are restored afterwards (and the learning rate
    is 0), so the probe changes nothing the first round computes.
    """
    def probe() -> None:
        runtime = client.runtime
        longest = max((e.text for e in client.labeled), key=len)
        repeats = max_length // max(len(longest.split()), 1) + 1
        text = " ".join([longest] * repeats)  # at least max_length words: truncated to fit
        task = TaskSettings(seed=0, local_steps=1, batch_size=batch_size, lr=0.0)
        saved = runtime.trainer.state()
        with torch.random.fork_rng():
            runtime.scorer.score([text] * client.eval_batch_size, client.eval_batch_size)
            examples = [hard_example(text, 0, runtime.num_classes)] * batch_size
            plan = batch_plan(examples, task.local_steps, task.batch_size, 0.0,
                              np.random.default_rng(task.seed))
            runtime.trainer.train(examples, plan, task.lr, task.weight_decay)
        runtime.trainer.load_state(saved)

    return probe


def check_budget(peak_bytes: int, budget_bytes: int, profile: str,
                 knobs: Mapping[str, object]) -> Footprint:
    """Compare a measured peak with the budget; :class:`OverBudget` names what to change.

    ``knobs`` are the current values of the settings that drive the footprint, e.g.
    ``{"model.max_length": 64, "federation.batch_size": 8, "backend": "eager"}``.
    """
    footprint = Footprint(peak_bytes, budget_bytes)
    if peak_bytes <= budget_bytes:
        logger.info("memory: peak %.0f MiB within the %s budget of %.0f MiB",
                    peak_bytes / MIB, profile, budget_bytes / MIB)
        return footprint
    now = ", ".join(f"{k}={v}" for k, v in knobs.items())
    raise OverBudget(
        f"the client peaks at {peak_bytes / MIB:.0f} MiB, over the {budget_bytes / MIB:.0f} MiB "
        f"memory_budget_mb of device profile {profile} (now {now}). Lower model.max_length or "
        "federation.batch_size (or run.eval_batch_size for scoring), use an int8 program "
        "(an int8 export backend), or raise memory_budget_mb if the device really has the memory")


def enforce_profile(client: LocalClient, config: RunConfig, profile_path: str | Path) -> Footprint:
    """Apply a device profile to a built client: its thread count, then the memory check."""
    profile = load_device_profile(profile_path)
    torch.set_num_threads(profile.threads)
    peak = measure(round_probe(client, config.federation.batch_size, config.model.max_length))
    knobs = {"model.max_length": config.model.max_length,
             "federation.batch_size": config.federation.batch_size,
             "run.eval_batch_size": config.run.eval_batch_size,
             "backend": client.runtime.backend}
    return check_budget(peak, profile.memory_budget_bytes, profile.name, knobs)
