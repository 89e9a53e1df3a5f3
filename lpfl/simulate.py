"""Every method of a run in one process, on the same data, budget and evaluation.

Methods (see :mod:`lpfl.methods`):

* ``lp-fl``: LoRA adapters federated with FedAvg, soft labels from the global model each round.
* ``fp-fl``: every parameter trained and exchanged, same schedule.
* ``centralized``: all clients' labeled (and unlabeled) data on one machine, the same number of
  gradient steps per round as the federation makes in total (``local_steps * clients_per_round``).
* ``*-no-soft``: the same without soft labels.
* ``zero-shot``: the prompt alone; ``final_accuracy`` is median-calibrated on the clients'
  unlabeled text, ``raw_accuracy`` the uncalibrated argmax.

Bytes per round are the sizes of the safetensors payloads a client would send (uplink) and
receive (downlink), summed over the round's clients, so methods compare on one measure. Federated
methods run every round through the server's round machine (:func:`lpfl.rounds.drive`) under the
run's :class:`~lpfl.protocol.RoundRules`: states travel in its encodings, updates are validated
and clipped, combined by its aggregation rule and guarded as on the websocket server, so a
simulation trains and aggregates exactly what a server run of the same config would. Each round
is recorded as the server records it (:class:`~lpfl.records.RoundRecord`); a run keeps the
record's :meth:`~lpfl.records.RoundRecord.summary`.
"""

from __future__ import annotations

import copy
import functools
import logging
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lpfl.client_round import LocalClient
from lpfl.config import ModelSettings, RunConfig
from lpfl.data import FederatedData, build_federated_data, load_dataset, load_eval_file
from lpfl.methods import lookup
from lpfl.model.adapters import load_trainable_state, set_mode, trainable_state
from lpfl.model.loading import BaseModel, load_base_model
from lpfl.model.prompt import PromptModel
from lpfl.protocol import ClipMode, RoundRules
from lpfl.records import RoundRecord
from lpfl.results import run_entry
from lpfl.rounds import DrivenRound, Fleet, drive
from lpfl.runtime import EagerScorer, score_members
from lpfl.softlabels import teacher_log_probs
from lpfl.strategy import FedAvg
from lpfl.task import TaskSettings
from lpfl.training import accuracy, median_calibrated_predictions

log = logging.getLogger(__name__)

Progress = Callable[[str], None]

FP32_RULES = RoundRules()
"""The server's default round rules: fp32 both ways (states travel unchanged), adaptive
clipping, FedAvg."""

CENTRAL_RULES = RoundRules(clip=ClipMode.OFF)
"""Centralized training's: no wire and no clipping, its one update is the new state."""


def print_progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def resolve_device(device: str) -> str:
    """``auto`` means cuda when a GPU is visible, else cpu."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


@functools.cache
def _cached_base(settings: ModelSettings) -> BaseModel:
    return load_base_model(settings)


def base_parameters(settings: ModelSettings) -> dict[str, torch.Tensor]:
    """Every parameter of the base model (tied weights once): what FP-FL exchanges."""
    return dict(_cached_base(settings).model.named_parameters())


def fresh_prompt_model(config: RunConfig, mode: str, seed: int) -> PromptModel:
    """A prompt model on a private copy of the (cached) base model, in training ``mode``.

    The new adapter's random initialisation depends on ``seed`` only, so a server process and
    the in-process simulation start from the same global adapter.
    """
    base = _cached_base(config.model)
    private = BaseModel(model=copy.deepcopy(base.model), tokenizer=base.tokenizer,
                        kind=base.kind, model_id=base.model_id)
    pm = PromptModel(private, config.prompt, config.model.max_length,
                     resolve_device(config.run.device))
    torch.manual_seed(seed)
    set_mode(pm, mode, config.lora)
    return pm


def method_mode(name: str) -> str:
    """What ``name`` trains, as a :func:`~lpfl.model.adapters.set_mode` mode."""
    return str(lookup(name).trains.value)


def method_strategy(config: RunConfig, method: str, seed: int) -> FedAvg:
    """The strategy (sampling and per-round task settings) of a federated ``method``."""
    per_round = 1 if lookup(method).centralized else config.federation.clients_per_round
    settings = round_settings(config, method, seed)
    return FedAvg(per_round, seed, lambda round_number: settings(round_number).to_wire())


def round_settings(config: RunConfig, method: str, seed: int) -> Callable[[int], TaskSettings]:
    """The per-round task settings of ``method`` (what a server sends with each task)."""
    row = lookup(method)
    soft, centralized = row.soft, row.centralized
    schedule = config.soft_labels
    fed = config.federation
    # Centralized training does the whole federation's steps and holds every client's soft labels.
    steps = fed.local_steps * (fed.clients_per_round if centralized else 1)
    soft_scale = config.data.num_clients if centralized else 1

    def settings(round_number: int) -> TaskSettings:
        budget = schedule.budget(round_number) if soft else 0
        return TaskSettings(seed=seed, local_steps=steps, batch_size=fed.batch_size,
                            lr=fed.lr_for(method), weight_decay=fed.weight_decay,
                            soft_label_budget=budget * soft_scale, soft_labels=schedule)

    return settings


@dataclass
class Evaluator:
    """Scores a prompt model on the test split."""

    data: FederatedData
    batch_size: int

    def __call__(self, pm: PromptModel) -> float:
        logits = pm.score([e.text for e in self.data.test], self.batch_size)
        return accuracy(logits, [e.label for e in self.data.test])

    def teacher(self, pm: PromptModel, patterns: Sequence[str]) -> float:
        """Accuracy of the soft-label teacher: the model under its own pattern and each of
        ``patterns``, log-probabilities averaged (:func:`lpfl.softlabels.teacher_log_probs`)."""
        texts = [e.text for e in self.data.test]
        members = score_members(EagerScorer(pm), texts, self.batch_size, patterns)
        return accuracy(teacher_log_probs(members), [e.label for e in self.data.test])


def _clients(config: RunConfig, pm: PromptModel, data: FederatedData,
             centralized: bool) -> list[LocalClient]:
    batch = config.run.eval_batch_size
    if centralized:
        return [LocalClient("central", 0, pm, data.all_labeled(), data.all_unlabeled(), batch)]
    return [LocalClient(f"client-{i}", i, pm, labeled, unlabeled, batch)
            for i, (labeled, unlabeled) in enumerate(zip(data.labeled, data.unlabeled,
                                                         strict=True))]


def federate(config: RunConfig, method: str, seed: int, data: FederatedData,
             progress: Progress = print_progress, rules: RoundRules = FP32_RULES,
             fleet: Fleet | None = None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """LP-FL, FP-FL or centralized training for one seed: its record and final global state.

    Each round runs through the server's round machine under ``rules``
    (:func:`lpfl.rounds.drive`): clients get the global state in ``rules.task_encoding`` and
    reply in ``rules.update_encoding``; updates are clipped, combined by ``rules.aggregation``
    and guarded as on the server. The global state itself, which is evaluated, stays fp32.
    Centralized training has no wire and no clipping (:data:`CENTRAL_RULES`). A round record
    says which clients' updates were ``clipped`` and why the guard ``refused`` the new state
    (empty when it was committed); with ``max_accuracy_drop`` set, every round is evaluated.
    The clients train in this process unless a ``fleet`` of a federated method is given
    (e.g. the Flower app's nodes, which hold the same data partitions).
    """
    row = lookup(method)
    if row.centralized:
        rules = CENTRAL_RULES
        if fleet is not None:
            raise ValueError(f"{method} trains in one process: it takes no fleet")
    pm = fresh_prompt_model(config, method_mode(method), seed)
    clients: Fleet | dict[str, LocalClient] = fleet or {
        c.client_id: c for c in _clients(config, pm, data, row.centralized)}
    evaluate = Evaluator(data, config.run.eval_batch_size)
    patterns = config.soft_labels.teacher_patterns if row.soft else ()
    total = config.federation.rounds
    every = config.run.eval_every

    def due(round_number: int) -> bool:
        return round_number == total or (every > 0 and round_number % every == 0)

    def evaluation(round_number: int, state: Mapping[str, torch.Tensor]) -> dict[str, float]:
        load_trainable_state(pm, state)
        if not (due(round_number) or rules.guards_accuracy):
            return {}
        metrics = {"accuracy": evaluate(pm)}
        if due(round_number) and patterns and round_number > 0:
            metrics["teacher_accuracy"] = evaluate.teacher(pm, patterns)
        return metrics

    records: list[RoundRecord] = []

    def record(driven: DrivenRound) -> None:
        # Centralized training moves no bytes: its one "client" is the server itself.
        traffic = {} if row.centralized else driven.traffic
        records.append(driven.committed.record(traffic, driven.seconds))
        summary = records[-1].summary()
        acc, loss = summary["accuracy"], summary["train_loss"]
        shown = "not evaluated" if acc is None else f"accuracy {acc:.3f}"
        refused = f"; new state refused: {summary['refused']}" if summary["refused"] else ""
        progress(f"[{method} seed {seed}] round {summary['round']}/{total}: {shown}, "
                 f"loss {'-' if loss is None else f'{loss:.3f}'}, "
                 f"soft labels {summary['soft_labels_added']}, "
                 f"uplink {summary['uplink_bytes']:,} B ({driven.seconds:.1f} s){refused}")

    global_state = drive(method_strategy(config, method, seed), trainable_state(pm), rules,
                         total, clients, evaluation, record)
    run = run_entry(method, seed, records, lr=config.federation.lr_for(method),
                    task_encoding=rules.task_encoding, update_encoding=rules.update_encoding,
                    clip=rules.clip.value, aggregation=rules.aggregation.value,
                    trainable_parameters=sum(t.numel() for t in global_state.values()))
    return run, global_state


def run_zero_shot(config: RunConfig, seed: int, data: FederatedData,
                  progress: Progress = print_progress) -> dict[str, Any]:
    """The prompt alone, raw and median-calibrated on the clients' unlabeled text."""
    started = time.perf_counter()
    pm = fresh_prompt_model(config, "frozen", seed)
    batch = config.run.eval_batch_size
    logits = pm.score([e.text for e in data.test], batch)
    labels = [e.label for e in data.test]
    reference_texts = [e.text for e in data.all_unlabeled()] or [e.text for e in data.validation]
    reference = pm.score(reference_texts, batch)
    calibrated = median_calibrated_predictions(logits, reference)
    cal_acc = float((calibrated == torch.tensor(labels)).float().mean())
    raw_acc = accuracy(logits, labels)
    progress(f"[zero-shot seed {seed}] raw {raw_acc:.3f}, calibrated {cal_acc:.3f}")
    record = RoundRecord(0, 1, time.perf_counter() - started, {"accuracy": cal_acc}, {}, [])
    return run_entry("zero-shot", seed, [record], raw_accuracy=raw_acc,
                     calibrated_accuracy=cal_acc)


def run_method(config: RunConfig, method: str, seed: int, data: FederatedData,
               progress: Progress = print_progress, rules: RoundRules = FP32_RULES
               ) -> dict[str, Any]:
    """One method for one seed; the dict is one entry of ``results.json``'s ``runs``.
    ``rules`` carries the wire encodings (see :func:`federate`)."""
    if method == "zero-shot":
        return run_zero_shot(config, seed, data, progress)
    return federate(config, method, seed, data, progress, rules)[0]


def federated_data(config: RunConfig, seed: int) -> FederatedData:
    """The run's data for ``seed``: fixed test split (or ``data.test_file``), validation set (or
    ``data.validation_file``), seeded few-shot sample and partition."""
    classes = config.prompt.num_classes
    examples = load_dataset(config.data, classes)
    return build_federated_data(config.data, examples, classes, seed,
                                test=load_eval_file(config.data, "test_file", classes),
                                validation=load_eval_file(config.data, "validation_file", classes))
