"""FedAvg maths: a weighted average of client states, pure and streaming.

The server folds each update into a running weighted sum as it arrives, so its memory is one model's
worth whatever the number of clients. :func:`weighted_average` is the same computation over a list,
for simulation and tests (which compare it against ``numpy.average``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch

from lpfl.errors import LpflError


class AggregationError(LpflError):
    """An update does not match the others (keys, shapes) or has a bad weight."""


class RunningWeightedSum:
    """Accumulates ``sum_i w_i * state_i`` and ``sum_i w_i`` in float64; ``mean()`` divides."""

    def __init__(self) -> None:
        self._sum: dict[str, torch.Tensor] = {}
        self._weight = 0.0
        self.count = 0

    @property
    def total_weight(self) -> float:
        return self._weight

    def add(self, state: Mapping[str, torch.Tensor], weight: float) -> None:
        """Fold one client's state in; ``weight`` is usually its number of training examples."""
        if not (weight > 0 and math.isfinite(weight)):
            raise AggregationError(f"update weight must be a positive finite number, got {weight}")
        if self._sum and set(state) != set(self._sum):
            missing = sorted(set(self._sum) - set(state))[:3]
            extra = sorted(set(state) - set(self._sum))[:3]
            raise AggregationError(f"update keys differ: missing {missing}, unexpected {extra}")
        for name, tensor in state.items():
            value = tensor.detach().to("cpu", torch.float64)
            if name not in self._sum:
                self._sum[name] = value * weight
            elif self._sum[name].shape != value.shape:
                raise AggregationError(f"update tensor {name!r} has shape {tuple(value.shape)}, "
                                       f"expected {tuple(self._sum[name].shape)}")
            else:
                self._sum[name].add_(value, alpha=weight)
        self._weight += weight
        self.count += 1

    def mean(self) -> dict[str, torch.Tensor]:
        """The weighted average as float32 tensors; raises if nothing was added."""
        if self.count == 0:
            raise AggregationError("no updates to aggregate")
        return {name: (s / self._weight).to(torch.float32) for name, s in self._sum.items()}


def weighted_average(
    updates: Iterable[tuple[Mapping[str, torch.Tensor], float]],
) -> dict[str, torch.Tensor]:
    """FedAvg: the example-weighted mean of each tensor across ``(state, weight)`` updates."""
    acc = RunningWeightedSum()
    for state, weight in updates:
        acc.add(state, weight)
    return acc.mean()
