"""Strategies: which clients train in a round, with what settings, and how replies are combined.

A strategy is ``configure`` (sample clients, build each one's task settings) plus ``aggregate``
(fold updates into the next global state). The same strategy object drives ``lpfl simulate`` and
the websocket server, so both sample the same clients and produce the same global adapter.

:class:`FedAvg` averages; :class:`FedMedian`, :class:`FedTrimmedAvg` and :class:`FedNormFilter`
sample and configure the same way but combine updates with a robust rule of
:mod:`lpfl.aggregation` (its docstring compares their cost and says when to use which).
:func:`make_strategy` builds the one an :class:`Aggregation` names.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from lpfl.aggregation import (
    Accumulator,
    HeldUpdates,
    RunningWeightedSum,
    coordinate_median,
    norm_filtered_mean,
    trimmed_mean,
)


@dataclass(frozen=True)
class ClientUpdate:
    """One client's reply to a training task."""

    client_id: str
    state: Mapping[str, torch.Tensor]
    num_examples: int
    metrics: Mapping[str, float] = field(default_factory=dict)


RoundSettings = Callable[[int], dict[str, Any]]
"""Maps a 1-based round number to the settings every sampled client gets for that round."""


class FedAvg:
    """Uniform client sampling and example-weighted averaging (McMahan et al., 2017).

    Sampling is a pure function of ``(seed, round, available clients)``: a rerun, a resumed server
    and the in-process simulation all pick the same clients.
    """

    def __init__(self, clients_per_round: int, seed: int, round_settings: RoundSettings) -> None:
        if clients_per_round < 1:
            raise ValueError("clients_per_round must be >= 1")
        self.clients_per_round = clients_per_round
        self.seed = seed
        self.round_settings = round_settings

    def sample(self, round_number: int, available: Sequence[str]) -> list[str]:
        """The clients that train in ``round_number``: all of them if there are few enough."""
        pool = sorted(available)
        if len(pool) <= self.clients_per_round:
            return pool
        rng = np.random.default_rng([self.seed, round_number])
        picked = rng.choice(len(pool), size=self.clients_per_round, replace=False)
        return [pool[i] for i in sorted(picked)]

    def configure(self, round_number: int, available: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Task settings per sampled client for this round."""
        settings = self.round_settings(round_number)
        return {cid: dict(settings) for cid in self.sample(round_number, available)}

    def start_aggregation(self) -> Accumulator:
        """A fresh accumulator; the server folds updates in as they arrive. FedAvg's is a
        running weighted sum: one model's worth of memory."""
        return RunningWeightedSum()

    def fold(self, acc: Accumulator, update: ClientUpdate) -> None:
        """Add one update, weighted by its number of training examples."""
        acc.add(update.state, float(update.num_examples))

    def aggregate(self, updates: Iterable[ClientUpdate]) -> dict[str, torch.Tensor]:
        """The next global state from all of a round's updates."""
        acc = self.start_aggregation()
        for update in updates:
            self.fold(acc, update)
        return acc.result()


class FedMedian(FedAvg):
    """FedAvg's sampling with the coordinate-wise median of the updates (Yin et al., 2018)."""

    def start_aggregation(self) -> Accumulator:
        return HeldUpdates(lambda states, weights: coordinate_median(states))


class FedTrimmedAvg(FedAvg):
    """FedAvg's sampling with the coordinate-wise trimmed mean: ``trim_fraction`` of the values
    dropped at each end (Yin et al., 2018)."""

    def __init__(self, clients_per_round: int, seed: int, round_settings: RoundSettings,
                 trim_fraction: float) -> None:
        super().__init__(clients_per_round, seed, round_settings)
        if not 0 <= trim_fraction < 0.5:
            raise ValueError("trim_fraction must be in [0, 0.5)")
        self.trim_fraction = trim_fraction

    def start_aggregation(self) -> Accumulator:
        return HeldUpdates(lambda states, weights: trimmed_mean(states, self.trim_fraction))


class FedNormFilter(FedAvg):
    """FedAvg over the updates within ``multiplier`` times the median distance of the
    coordinate-wise median; the others are left out
    (:func:`lpfl.aggregation.norm_filtered_mean`)."""

    def __init__(self, clients_per_round: int, seed: int, round_settings: RoundSettings,
                 multiplier: float) -> None:
        super().__init__(clients_per_round, seed, round_settings)
        if not multiplier >= 1:
            raise ValueError("multiplier must be >= 1")
        self.multiplier = multiplier

    def start_aggregation(self) -> Accumulator:
        return HeldUpdates(lambda states, weights: norm_filtered_mean(states, weights,
                                                                      self.multiplier))


class Aggregation(enum.Enum):
    """How a round's updates become the next global state (``[server.round] aggregation``)."""

    FEDAVG = "fedavg"
    MEDIAN = "median"
    TRIMMED_MEAN = "trimmed-mean"
    NORM_FILTER = "norm-filter"


def make_strategy(aggregation: Aggregation, clients_per_round: int, seed: int,
                  round_settings: RoundSettings, *, trim_fraction: float,
                  norm_multiplier: float) -> FedAvg:
    """The strategy that combines updates by ``aggregation``; ``trim_fraction`` is for the
    trimmed mean, ``norm_multiplier`` for the norm filter."""
    match aggregation:
        case Aggregation.FEDAVG:
            return FedAvg(clients_per_round, seed, round_settings)
        case Aggregation.MEDIAN:
            return FedMedian(clients_per_round, seed, round_settings)
        case Aggregation.TRIMMED_MEAN:
            return FedTrimmedAvg(clients_per_round, seed, round_settings, trim_fraction)
        case Aggregation.NORM_FILTER:
            return FedNormFilter(clients_per_round, seed, round_settings, norm_multiplier)
