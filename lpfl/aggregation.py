"""Aggregation maths: FedAvg's weighted mean and three robust rules, all pure, tested against numpy.

Each rule comes as a pure function over a list of client states (for simulation and tests) and
as an :class:`Accumulator` the server folds updates into as they arrive. What they cost and when
to use which, for ``n`` updates of ``d`` values:

============== ================== ==================== ============================================
rule           server memory      time                 use it when
============== ================== ==================== ============================================
mean (FedAvg)  one model (``d``)  ``O(n·d)``           the default. Streaming: memory does not grow
                                                       with the clients. With norm clipping (on by
                                                       default) one client moves the model at most
                                                       by its weight share of the clip bound.
median         ``n·d`` (every     ``O(n·d·log n)``     up to just under half the clients may be
               update is held)                         hostile. Ignores example weights and is
                                                       noisier than the mean on honest non-IID
                                                       clients, so it costs accuracy without
                                                       attackers.
trimmed mean   ``n·d``            ``O(n·d·log n)``     a known bound on the hostile share: set
                                                       ``trim_fraction`` at or above it. Drops that
                                                       share at each end of every coordinate,
                                                       unweighted mean of the rest.
norm filter    ``n·d``            ``O(n·d·log n)``     attacks are whole updates far from the
                                                       rest (scaled, random, sign-flipped when the
                                                       honest clients agree). Drops those, keeps
                                                       FedAvg's example weighting for the others.
============== ================== ==================== ============================================

The clipping helpers (:func:`delta_norm`, :func:`clip_delta`) measure and bound an update's
change from the global state; :mod:`lpfl.protocol` applies them before any rule, to updates
already checked by :func:`lpfl.validation.check_update`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol

import torch

from lpfl.errors import LpflError

State = Mapping[str, torch.Tensor]


class AggregationError(LpflError):
    """Nothing to aggregate, or a rule's setting out of range."""


class Accumulator(Protocol):
    """Receives a round's updates one by one and combines them when the round closes.

    The updates must have passed :func:`lpfl.validation.check_update` against one reference
    state (same names, dtypes and shapes, finite values, a weight >= 1): the accumulators and the
    rules below take them as they are.
    """

    @property
    def count(self) -> int:
        """How many updates were added."""
        ...

    def add(self, state: State, weight: float) -> None:
        """Fold one client's state in; ``weight`` is usually its number of training examples."""
        ...

    def result(self) -> dict[str, torch.Tensor]:
        """The combined state as float32 tensors; raises :class:`AggregationError` if empty."""
        ...


def _require_some(count: int) -> None:
    if count == 0:
        raise AggregationError("no updates to aggregate")


class RunningWeightedSum:
    """FedAvg streaming: accumulates ``sum_i w_i * state_i`` and ``sum_i w_i`` in float64."""

    def __init__(self) -> None:
        self._count = 0
        self._sum: dict[str, torch.Tensor] = {}
        self._weight = 0.0

    @property
    def count(self) -> int:
        return self._count

    @property
    def total_weight(self) -> float:
        return self._weight

    def add(self, state: State, weight: float) -> None:
        self._count += 1
        for name, tensor in state.items():
            value = tensor.detach().to("cpu", torch.float64)
            if name in self._sum:
                self._sum[name].add_(value, alpha=weight)
            else:
                self._sum[name] = value * weight
        self._weight += weight

    def result(self) -> dict[str, torch.Tensor]:
        """The weighted average."""
        _require_some(self._count)
        return {name: (s / self._weight).to(torch.float32) for name, s in self._sum.items()}


Rule = Callable[[Sequence[State], Sequence[float]], dict[str, torch.Tensor]]
"""A robust rule: ``(states, weights) -> combined state``."""


class HeldUpdates:
    """Keeps every update (float32, on the CPU) and applies ``rule`` when the round closes: what
    the robust rules need, at the price of memory that grows with the number of updates."""

    def __init__(self, rule: Rule) -> None:
        self._rule = rule
        self._states: list[dict[str, torch.Tensor]] = []
        self._weights: list[float] = []

    @property
    def count(self) -> int:
        return len(self._states)

    def add(self, state: State, weight: float) -> None:
        self._states.append({n: t.detach().to("cpu", torch.float32) for n, t in state.items()})
        self._weights.append(weight)

    def result(self) -> dict[str, torch.Tensor]:
        _require_some(self.count)
        return self._rule(self._states, self._weights)


def weighted_average(updates: Iterable[tuple[State, float]]) -> dict[str, torch.Tensor]:
    """FedAvg: the example-weighted mean of each tensor across ``(state, weight)`` updates."""
    acc = RunningWeightedSum()
    for state, weight in updates:
        acc.add(state, weight)
    return acc.result()


def _sorted_stack(states: Sequence[State], name: str) -> torch.Tensor:
    """One tensor of every state, stacked on a new first axis and sorted along it (float64)."""
    return torch.stack([s[name].to(torch.float64) for s in states]).sort(dim=0).values


def coordinate_median(states: Sequence[State]) -> dict[str, torch.Tensor]:
    """Coordinate-wise median (the mean of the two middle values for an even count), like
    ``numpy.median(axis=0)``. Unweighted: one client, one vote."""
    if not states:
        raise AggregationError("no updates to aggregate")
    n = len(states)
    out = {}
    for name in states[0]:
        ordered = _sorted_stack(states, name)
        middle = (ordered[(n - 1) // 2] + ordered[n // 2]) / 2
        out[name] = middle.to(torch.float32)
    return out


def trimmed_mean(states: Sequence[State], fraction: float) -> dict[str, torch.Tensor]:
    """Coordinate-wise trimmed mean: drop ``floor(fraction * n)`` values at each end of every
    coordinate and average the rest, unweighted (``scipy.stats.trim_mean``'s definition)."""
    if not 0 <= fraction < 0.5:
        raise AggregationError(f"trim fraction {fraction} must be in [0, 0.5)")
    if not states:
        raise AggregationError("no updates to aggregate")
    n = len(states)
    cut = math.floor(fraction * n)
    return {name: _sorted_stack(states, name)[cut : n - cut].mean(dim=0).to(torch.float32)
            for name in states[0]}


def delta_norm(state: State, reference: State) -> float:
    """L2 norm of ``state - reference`` over all tensors together, in float64."""
    squared = sum(float((state[n].double() - reference[n].double()).square().sum())
                  for n in reference)
    return math.sqrt(squared)


def clip_delta(state: State, reference: State, norm: float, bound: float) -> dict[
        str, torch.Tensor]:
    """``state`` moved back toward ``reference`` so its change has L2 norm ``bound``
    (``norm`` is :func:`delta_norm` of the two, already computed). Call it only when
    ``norm > bound``."""
    scale = bound / norm
    return {name: ref + (state[name] - ref) * scale for name, ref in reference.items()}


def norm_filtered_mean(states: Sequence[State], weights: Sequence[float],
                       multiplier: float) -> dict[str, torch.Tensor]:
    """Drop every state farther (L2, all tensors together) from the coordinate-wise median than
    ``multiplier`` times the median of those distances; the example-weighted mean of the rest.

    The median distance comes from the majority when fewer than half the states
    are outliers, so outliers cannot widen the cut-off. When it is 0 (most states agree exactly)
    only states at the median are kept.
    """
    if len(states) != len(weights):
        raise AggregationError(f"{len(states)} states but {len(weights)} weights")
    center = coordinate_median(states)
    distances = [delta_norm(s, center) for s in states]
    cutoff = multiplier * statistics.median(distances)
    return weighted_average((s, w) for s, w, d in zip(states, weights, distances, strict=True)
                            if d <= cutoff)
