"""Soft labels: the teacher's view of a client's unlabeled texts and which of them to keep.

Pure functions over logits and probability matrices, so every rule is tested without a model.

* The *teacher* is the newest global model scored under one or more patterns (ensemble members
  with the same label words). Its class log-probabilities are the mean of the members' (a
  geometric mean of their distributions); :func:`teacher_log_probs`.
* Selection (:func:`select_confident`): keep texts whose top teacher probability reaches the
  threshold, most confident first, at most ``budget`` of them and, when balanced, at most
  ``budget // num_classes`` per predicted class; optionally only texts every member agrees on
  (:func:`members_agree`).
* Optionally the teacher is aligned to the class distribution of the client's labeled examples
  (:func:`align_to_prior`) before anything is chosen.
* Targets (:func:`soft_targets`): the teacher's distribution at a temperature, or its argmax.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from lpfl.config import SoftTarget


def teacher_log_probs(member_logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean of the members' class log-probabilities, renormalised: ``[n, classes]``."""
    if not member_logits:
        raise ValueError("the teacher needs at least one member's logits")
    mean = torch.stack([F.log_softmax(m.float(), -1) for m in member_logits]).mean(0)
    return F.log_softmax(mean, -1)


def align_to_prior(log_probs: torch.Tensor, prior: torch.Tensor,
                   iterations: int = 20) -> torch.Tensor:
    """Distribution alignment: shift every row's class log-probabilities by one bias vector so
    that their mean distribution over the pool matches ``prior`` ([classes], sums to 1), then
    renormalise. A model that leans to one label word (a prompted LM usually does) no longer
    hands that class most of the confident texts; the order of texts within a class is kept."""
    if prior.ndim != 1 or prior.shape[0] != log_probs.shape[-1]:
        raise ValueError(f"prior must have shape ({log_probs.shape[-1]},), "
                         f"got {tuple(prior.shape)}")
    target = prior.float().clamp_min(1e-6).log()
    bias = torch.zeros_like(target)
    for _ in range(iterations):
        mean = F.log_softmax(log_probs + bias, -1).exp().mean(0).clamp_min(1e-12).log()
        bias = bias + target - mean
    return F.log_softmax(log_probs + bias, -1)


def members_agree(member_logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """A boolean ``[n]``: every member predicts the same class for that row."""
    predictions = torch.stack([m.argmax(-1) for m in member_logits])
    return (predictions == predictions[0]).all(0)


def soft_targets(teacher: torch.Tensor, target: SoftTarget, temperature: float) -> torch.Tensor:
    """Training targets ``[n, classes]`` from teacher log-probabilities ``teacher``."""
    if target is SoftTarget.ARGMAX:
        return F.one_hot(teacher.argmax(-1), teacher.shape[-1]).float()
    return torch.softmax(teacher / temperature, -1)


def select_confident(probs: torch.Tensor, budget: int, threshold: float,
                     balanced: bool = True, eligible: torch.Tensor | None = None) -> list[int]:
    """Row indices of ``probs`` ([n, classes], rows sum to 1) chosen as soft labels.

    ``eligible`` (boolean ``[n]``) leaves out rows before anything else. Ties in confidence are
    broken by index, so the choice is deterministic.
    """
    if probs.ndim != 2:
        raise ValueError(f"probs must be [n, classes], got shape {tuple(probs.shape)}")
    if eligible is not None and tuple(eligible.shape) != (probs.shape[0],):
        raise ValueError(f"eligible must have shape ({probs.shape[0]},), "
                         f"got {tuple(eligible.shape)}")
    if budget <= 0 or probs.shape[0] == 0:
        return []
    confidence, predicted = probs.max(dim=1)
    order = sorted(range(probs.shape[0]), key=lambda i: (-float(confidence[i]), i))
    candidates = [i for i in order if float(confidence[i]) >= threshold
                  and (eligible is None or bool(eligible[i]))]
    if not balanced:
        return sorted(candidates[:budget])
    quota = budget // probs.shape[1]
    taken: dict[int, int] = {}
    chosen = []
    for i in candidates:
        cls = int(predicted[i])
        if taken.get(cls, 0) < quota:
            taken[cls] = taken.get(cls, 0) + 1
            chosen.append(i)
    return sorted(chosen)
