import numpy as np
import pytest
import torch

from lpfl.aggregation import AggregationError, RunningWeightedSum, weighted_average
from lpfl.strategy import ClientUpdate, FedAvg


def test_fedavg_equals_numpy_weighted_average() -> None:
    rng = np.random.default_rng(0)
    states = [{"a": rng.normal(size=(3, 4)), "b": rng.normal(size=7)} for _ in range(5)]
    weights = [3.0, 1.0, 10.0, 2.0, 5.0]
    got = weighted_average(
        ({k: torch.from_numpy(v).float() for k, v in s.items()}, w)
        for s, w in zip(states, weights, strict=True)
    )
    for key in ("a", "b"):
        expected = np.average(np.stack([s[key] for s in states]), axis=0, weights=weights)
        np.testing.assert_allclose(got[key].numpy(), expected, rtol=1e-6, atol=1e-6)


def test_mismatched_updates_are_refused() -> None:
    acc = RunningWeightedSum()
    acc.add({"a": torch.zeros(2)}, 1.0)
    with pytest.raises(AggregationError, match="keys differ"):
        acc.add({"b": torch.zeros(2)}, 1.0)
    with pytest.raises(AggregationError, match="shape"):
        acc.add({"a": torch.zeros(3)}, 1.0)
    with pytest.raises(AggregationError, match="positive"):
        acc.add({"a": torch.zeros(2)}, 0.0)
    with pytest.raises(AggregationError, match="no updates"):
        RunningWeightedSum().mean()


def test_strategy_samples_deterministically_and_weights_by_examples() -> None:
    strategy = FedAvg(2, seed=3, round_settings=lambda r: {"round_lr": r})
    clients = [f"c{i}" for i in range(6)]
    first = strategy.configure(1, clients)
    assert len(first) == 2 and first == strategy.configure(1, list(reversed(clients)))
    assert all(task == {"round_lr": 1} for task in first.values())
    picks = {tuple(strategy.sample(r, clients)) for r in range(1, 20)}
    assert len(picks) > 3  # different rounds sample different clients
    assert FedAvg(10, 0, dict).sample(1, clients) == sorted(clients)
    updates = [ClientUpdate("x", {"w": torch.tensor([0.0])}, 1),
               ClientUpdate("y", {"w": torch.tensor([4.0])}, 3)]
    assert float(strategy.aggregate(updates)["w"]) == pytest.approx(3.0)
