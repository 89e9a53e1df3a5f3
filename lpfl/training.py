"""Local training and evaluation of a prompt model on hard and soft targets.

Every training example carries a target distribution over classes: one-hot for a labeled (gold)
example, the teacher's distribution for a soft-labeled one, and is trained with cross-entropy
against it, scaled by its weight. Which examples go into which step is a *batch plan*
(:func:`batch_plan`), drawn once per round by the client, so that every trainer (eager or an
exported program) sees the same batches, and the client can report how much of its training was
gold. A client may also train the language-model loss on its unlabeled texts alongside
(:class:`LmBatches`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lpfl.model.prompt import PromptModel


@dataclass(frozen=True)
class TrainExample:
    """A text with a target distribution; ``soft`` marks a pseudo-labeled example."""

    text: str
    target: tuple[float, ...]
    weight: float = 1.0
    soft: bool = False


def hard_example(text: str, label: int, num_classes: int) -> TrainExample:
    return TrainExample(text, tuple(1.0 if c == label else 0.0 for c in range(num_classes)))


def example_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy of ``logits`` against target distributions ``targets``."""
    return -(targets * F.log_softmax(logits, dim=-1)).sum(-1)


@dataclass(frozen=True)
class LmBatches:
    """Unlabeled texts trained with the language-model loss alongside the classification steps:
    step ``i`` adds ``weight`` times the LM loss of ``texts[j] for j in plan[i]`` (written in the
    run's pattern, see :meth:`lpfl.model.prompt.PromptModel.lm_loss`)."""

    texts: tuple[str, ...]
    plan: tuple[tuple[int, ...], ...]
    weight: float

    def __post_init__(self) -> None:
        if self.weight <= 0.0:
            raise ValueError(f"LM loss weight {self.weight} must be > 0")
        if any(not 0 <= i < len(self.texts) for batch in self.plan for i in batch):
            raise ValueError("the LM batch plan points outside its texts")


def shuffled_batches(count: int, steps: int, batch_size: int,
                     rng: np.random.Generator) -> list[list[int]]:
    """``steps`` batches of positions in ``range(count)``: consecutive slices of seeded
    shuffles, so every position is drawn once before any is drawn again."""
    if count < 1:
        raise ValueError("nothing to batch")
    plan: list[list[int]] = []
    while len(plan) < steps:
        order = rng.permutation(count).tolist()
        plan += [order[start : start + batch_size] for start in range(0, count, batch_size)]
    return plan[:steps]


def _cycle(positions: Sequence[int], rng: np.random.Generator) -> Iterator[int]:
    """``positions`` in seeded shuffles, one after another, forever."""
    while True:
        for index in rng.permutation(len(positions)).tolist():
            yield positions[index]


def batch_plan(examples: Sequence[TrainExample], steps: int, batch_size: int,
               gold_share: float, rng: np.random.Generator) -> list[list[int]]:
    """Which examples (positions in ``examples``) each of ``steps`` batches trains on.

    With ``gold_share == 0`` every batch is the next slice of seeded shuffles of all examples, so
    gold (labeled) and soft examples are drawn in proportion to their numbers. With
    ``gold_share > 0`` and both kinds present, each batch holds ``ceil(gold_share * batch_size)``
    gold examples and soft ones for the rest, each kind cycled through its own shuffles: however
    many soft labels a client adds, they never dilute its labels below that share.
    """
    if not examples:
        raise ValueError("no training examples")
    if not 0.0 <= gold_share <= 1.0:
        raise ValueError(f"gold_share={gold_share} must be in [0, 1]")
    gold = [i for i, e in enumerate(examples) if not e.soft]
    soft = [i for i, e in enumerate(examples) if e.soft]
    if gold_share == 0.0 or not gold or not soft:
        return shuffled_batches(len(examples), steps, batch_size, rng)
    per_batch = min(batch_size, max(1, math.ceil(gold_share * batch_size)))
    gold_cycle, soft_cycle = _cycle(gold, rng), _cycle(soft, rng)
    return [[next(gold_cycle) for _ in range(per_batch)]
            + [next(soft_cycle) for _ in range(batch_size - per_batch)] for _ in range(steps)]


def gold_fraction(examples: Sequence[TrainExample], plan: Sequence[Sequence[int]]) -> float:
    """The share of the planned training examples that are gold (labeled)."""
    drawn = [i for batch in plan for i in batch]
    return sum(not examples[i].soft for i in drawn) / max(len(drawn), 1)


def batch_tensors(chosen: Sequence[TrainExample]) -> tuple[torch.Tensor, torch.Tensor]:
    """The targets ``[batch, classes]`` and weights ``[batch]`` of a batch, float32 on the CPU."""
    targets = torch.tensor([e.target for e in chosen], dtype=torch.float32)
    weights = torch.tensor([e.weight for e in chosen], dtype=torch.float32)
    return targets, weights


def weighted_loss(losses: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The weighted mean of per-example losses (what every trainer minimises)."""
    return (losses * weights).sum() / weights.sum().clamp_min(1e-12)


def check_plans(plan: Sequence[Sequence[int]], lm: LmBatches | None) -> None:
    """A ValueError unless ``plan`` has a batch and ``lm`` (if any) one LM batch per step."""
    if not plan:
        raise ValueError("the batch plan is empty")
    if lm is not None and len(lm.plan) != len(plan):
        raise ValueError(f"{len(lm.plan)} LM batches for {len(plan)} training steps")


def train_steps(pm: PromptModel, examples: Sequence[TrainExample],
                plan: Sequence[Sequence[int]], lr: float, weight_decay: float = 0.0,
                lm: LmBatches | None = None) -> float:
    """One AdamW step per batch of ``plan`` on the trainable parameters; the mean classification
    loss. With ``lm``, each step's objective also has its weighted language-model loss.

    The optimizer is fresh each call: in federated learning each round starts from the new global
    state, and optimizer moments are neither transmitted nor averaged.
    """
    check_plans(plan, lm)
    params = [p for p in pm.network.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters; attach LoRA or unfreeze it")
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    pm.network.train()
    total = 0.0
    for step, batch in enumerate(plan):
        chosen = [examples[i] for i in batch]
        logits = pm.class_logits(pm.encode([e.text for e in chosen]))
        targets, weights = (t.to(logits.device, logits.dtype) for t in batch_tensors(chosen))
        loss = weighted_loss(example_losses(logits, targets), weights)
        objective = loss
        if lm is not None:
            texts = [lm.texts[i] for i in lm.plan[step]]
            objective = loss + lm.weight * pm.lm_loss(pm.encode(texts))
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        optimizer.step()
        total += float(loss.detach())
    pm.network.eval()
    return total / len(plan)


def accuracy(logits: torch.Tensor, labels: Sequence[int]) -> float:
    """Fraction of rows whose argmax equals the label."""
    if len(labels) == 0:
        return float("nan")
    predicted = logits.argmax(-1)
    return float((predicted == torch.tensor(list(labels))).float().mean())


def median_calibrated_predictions(logits: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Zero-shot calibration on unlabeled text: centre the scores on their medians there.

    Two classes: predict class 1 when ``s1 - s0`` exceeds its median on ``reference`` (a
    threshold set on unlabeled sentences). More classes: subtract each class's median
    log-probability on ``reference``.
    """
    if logits.shape[1] == 2:
        threshold = (reference[:, 1] - reference[:, 0]).median()
        return ((logits[:, 1] - logits[:, 0]) > threshold).long()
    centre = F.log_softmax(reference, -1).median(dim=0).values
    return (F.log_softmax(logits, -1) - centre).argmax(-1)
