"""Soft-label selection: which unlabeled texts a client adds to its training set this round.

Pure functions over a probability matrix, so the rule is tested without a model: keep texts whose
top class probability reaches the threshold, most confident first, at most ``budget`` of them and,
when balanced, at most ``budget // num_classes`` per predicted class. The kept texts train with
their whole probability vector as the target (a soft label), not with the argmax.
"""

from __future__ import annotations

import torch


def select_confident(probs: torch.Tensor, budget: int, threshold: float,
                     balanced: bool = True) -> list[int]:
    """Row indices of ``probs`` ([n, classes], rows sum to 1) chosen as soft labels.

    Ties in confidence are broken by index, so the choice is deterministic.
    """
    if probs.ndim != 2:
        raise ValueError(f"probs must be [n, classes], got shape {tuple(probs.shape)}")
    if budget <= 0 or probs.shape[0] == 0:
        return []
    confidence, predicted = probs.max(dim=1)
    order = sorted(range(probs.shape[0]), key=lambda i: (-float(confidence[i]), i))
    eligible = [i for i in order if float(confidence[i]) >= threshold]
    if not balanced:
        return sorted(eligible[:budget])
    quota = budget // probs.shape[1]
    taken: dict[int, int] = {}
    chosen = []
    for i in eligible:
        cls = int(predicted[i])
        if taken.get(cls, 0) < quota:
            taken[cls] = taken.get(cls, 0) + 1
            chosen.append(i)
    return sorted(chosen)
