"""Strategies: which clients train in a round, with what settings, and how replies are combined.

A strategy is ``configure`` (sample clients, build each one's task settings) plus ``aggregate``
(fold updates into the next global state). The same strategy object drives ``lpfl simulate`` and
the websocket server, so both sample the same clients and produce the same global adapter.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from lpfl.aggregation import RunningWeightedSum


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

    def start_aggregation(self) -> RunningWeightedSum:
        """A fresh accumulator; the server folds updates in as they arrive."""
        return RunningWeightedSum()

    def fold(self, acc: RunningWeightedSum, update: ClientUpdate) -> None:
        """Add one update, weighted by its number of training examples."""
        acc.add(update.state, float(update.num_examples))

    def aggregate(self, updates: Iterable[ClientUpdate]) -> dict[str, torch.Tensor]:
        """The next global state from all of a round's updates."""
        acc = self.start_aggregation()
        for update in updates:
            self.fold(acc, update)
        return acc.mean()
