"""Local training and evaluation of a prompt model on hard and soft targets.

Every training example carries a target distribution over classes: one-hot for a labeled example,
the global model's probabilities for a soft-labeled one. Hard examples use cross-entropy; soft ones
use soft cross-entropy or KL divergence (same gradient, KL reads 0 at a perfect fit), scaled by
their weight. Batches are drawn by cycling through seeded shuffles of the set.
"""

from __future__ import annotations

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


def example_losses(logits: torch.Tensor, targets: torch.Tensor, soft: torch.Tensor,
                   soft_loss: str) -> torch.Tensor:
    """Per-example loss: cross-entropy against ``targets``; KL for soft rows if asked."""
    log_probs = F.log_softmax(logits, dim=-1)
    ce = -(targets * log_probs).sum(-1)
    if soft_loss != "kl":
        return ce
    entropy = -(targets * targets.clamp_min(1e-12).log()).sum(-1)
    return torch.where(soft, ce - entropy, ce)


def batches(n: int, batch_size: int, rng: np.random.Generator) -> Iterator[list[int]]:
    while True:
        order = rng.permutation(n).tolist()
        for start in range(0, n, batch_size):
            yield order[start : start + batch_size]


def train_steps(pm: PromptModel, examples: Sequence[TrainExample], steps: int, batch_size: int,
                lr: float, rng: np.random.Generator, soft_loss: str = "soft-ce",
                weight_decay: float = 0.0) -> float:
    """Run ``steps`` AdamW steps on the trainable parameters; returns the mean training loss.

    The optimizer is fresh each call: in federated learning each round starts from the new global
    state, and optimizer moments are neither transmitted nor averaged.
    """
    if not examples:
        raise ValueError("no training examples")
    params = [p for p in pm.network.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters; attach LoRA or unfreeze it")
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    pm.network.train()
    total = 0.0
    order = batches(len(examples), batch_size, rng)
    for _ in range(steps):
        chosen = [examples[i] for i in next(order)]
        logits = pm.class_logits(pm.encode([e.text for e in chosen]))
        targets = torch.tensor([e.target for e in chosen], dtype=logits.dtype,
                               device=logits.device)
        soft = torch.tensor([e.soft for e in chosen], device=logits.device)
        weights = torch.tensor([e.weight for e in chosen], dtype=logits.dtype,
                               device=logits.device)
        losses = example_losses(logits, targets, soft, soft_loss)
        loss = (losses * weights).sum() / weights.sum().clamp_min(1e-12)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.detach())
    pm.network.eval()
    return total / steps


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
