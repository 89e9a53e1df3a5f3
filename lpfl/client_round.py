"""One client's work in one round: take the global state, soft-label, train, report.

This is the whole LP-FL client algorithm, with no I/O: the in-process simulation calls it
directly and the websocket client calls it when a task arrives, so both compute the same update.

1. Load the global trainable state (LoRA adapters, or every parameter for FP-FL).
2. If the round's soft-label budget is positive, score the unlabeled texts with that global model
   under the run's pattern and any teacher patterns (:mod:`lpfl.softlabels`), keep the confident
   ones and give them the teacher's targets. Labels are chosen anew every round from the newest
   global model, so they improve as it improves.
3. Train ``local_steps`` steps on labeled (hard) plus soft-labeled examples, batched by
   :func:`lpfl.training.batch_plan` (a fixed share of labeled examples per batch if asked), with
   the language-model loss on batches of unlabeled texts alongside if the task asks for it.
4. Return the new trainable state, the number of training examples (the FedAvg weight) and metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from lpfl.data import Example
from lpfl.model.prompt import PromptModel
from lpfl.runtime import ClientRuntime, score_members
from lpfl.softlabels import (
    align_to_prior,
    members_agree,
    select_confident,
    soft_targets,
    teacher_log_probs,
)
from lpfl.strategy import ClientUpdate
from lpfl.task import TaskSettings
from lpfl.trainer_api import device_capabilities
from lpfl.training import (
    LmBatches,
    TrainExample,
    batch_plan,
    gold_fraction,
    hard_example,
    shuffled_batches,
)

log = logging.getLogger(__name__)


class LocalClient:
    """A client's data and runtime; :meth:`train_round` is the Trainer a connection calls.

    ``model`` is a prompt model (everything runs eagerly on it) or a :class:`ClientRuntime`
    whose scorer and trainer may be exported programs (see :mod:`lpfl.runtime`).
    """

    def __init__(self, client_id: str, index: int, model: PromptModel | ClientRuntime,
                 labeled: Sequence[Example], unlabeled: Sequence[Example],
                 eval_batch_size: int = 32) -> None:
        if not labeled:
            raise ValueError(f"client {client_id} has no labeled examples")
        self.client_id = client_id
        self.index = index
        self.runtime = model if isinstance(model, ClientRuntime) else ClientRuntime.eager(model)
        self.labeled = list(labeled)
        self.unlabeled = list(unlabeled)
        self.eval_batch_size = eval_batch_size

    def capabilities(self) -> dict[str, Any]:
        """What this client runs on, for its hello message: the soft-labelling backend, where
        training runs, runtime versions, CPU architecture and peak memory."""
        rt = self.runtime
        caps = device_capabilities(rt.backend, **rt.versions, model=rt.model_id)
        caps["training"] = rt.training
        return caps

    def soft_label(self, task: TaskSettings) -> tuple[list[TrainExample], dict[str, float]]:
        """Pseudo-label the unlabeled pool with the current (global) model as the teacher."""
        if task.soft_label_budget <= 0 or not self.unlabeled:
            return [], {"soft_labels_added": 0.0}
        rule = task.soft_labels
        texts = [e.text for e in self.unlabeled]
        members = score_members(self.runtime.scorer, texts, self.eval_batch_size,
                                rule.teacher_patterns)
        teacher = teacher_log_probs(members)
        if rule.align:
            teacher = align_to_prior(teacher, self.label_prior())
        eligible = members_agree(members) if rule.agreement else None
        chosen = select_confident(teacher.exp(), task.soft_label_budget, rule.threshold,
                                  rule.balanced, eligible)
        targets = soft_targets(teacher[chosen], rule.target, rule.temperature)
        soft = [TrainExample(texts[i], tuple(float(p) for p in row), weight=rule.weight,
                             soft=True)
                for i, row in zip(chosen, targets, strict=True)]
        metrics = {"soft_labels_added": float(len(chosen))}
        metrics.update(self._hidden_label_checks(chosen, teacher, members[0]))
        return soft, metrics

    def label_prior(self) -> torch.Tensor:
        """The class frequencies of this client's labeled examples (add-one smoothed)."""
        counts = torch.ones(self.runtime.num_classes)
        for example in self.labeled:
            counts[example.label] += 1
        return counts / counts.sum()

    def _hidden_label_checks(self, chosen: Sequence[int], teacher: torch.Tensor,
                             student: torch.Tensor) -> dict[str, float]:
        """Diagnostics against the pool's hidden labels, where it has them (never used to
        train): how many chosen soft labels are right, and how many of the whole pool the
        teacher and the student (the run's pattern alone) get right."""
        known = [i for i, e in enumerate(self.unlabeled) if e.label >= 0]
        if not known:
            return {}
        labels = torch.tensor([self.unlabeled[i].label for i in known])
        kept = [i for i in chosen if self.unlabeled[i].label >= 0]
        return {
            "soft_label_correct": float(sum(int(teacher[i].argmax()) == self.unlabeled[i].label
                                            for i in kept)),
            "soft_label_checked": float(len(kept)),
            "pool_checked": float(len(known)),
            "teacher_pool_correct": float((teacher[known].argmax(-1) == labels).sum()),
            "student_pool_correct": float((student[known].argmax(-1) == labels).sum()),
        }

    def train_round(self, round_number: int, global_state: Mapping[str, torch.Tensor],
                    settings: Mapping[str, Any]) -> ClientUpdate:
        """Soft-label and train from ``global_state``; the update the server aggregates."""
        task = TaskSettings.from_wire(settings)
        self.runtime.scorer.load_state(global_state)
        started = time.perf_counter()
        soft, metrics = self.soft_label(task)
        labeling_done = time.perf_counter()
        examples = [hard_example(e.text, e.label, self.runtime.num_classes)
                    for e in self.labeled]
        examples += soft
        rng = np.random.default_rng([task.seed, round_number, self.index])
        plan = batch_plan(examples, task.local_steps, task.batch_size,
                          task.soft_labels.gold_share, rng)
        lm = None
        if task.soft_labels.lm_weight > 0.0 and self.unlabeled:
            lm_plan = shuffled_batches(len(self.unlabeled), task.local_steps, task.batch_size, rng)
            lm = LmBatches(tuple(e.text for e in self.unlabeled),
                           tuple(tuple(batch) for batch in lm_plan), task.soft_labels.lm_weight)
        trainer = self.runtime.trainer
        trainer.load_state(global_state)
        loss = trainer.train(examples, plan, task.lr, task.weight_decay, lm)
        finished = time.perf_counter()
        metrics.update(train_loss=loss, gold_share=gold_fraction(examples, plan),
                       soft_label_seconds=labeling_done - started,
                       train_seconds=finished - labeling_done)
        log.info("client %s round %d: %d examples (%d soft), loss %.4f", self.client_id,
                 round_number, len(examples), len(soft), loss)
        return ClientUpdate(self.client_id, trainer.state(), len(examples), metrics)
