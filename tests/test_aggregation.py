import numpy as np
import pytest
import torch

from lpfl.aggregation import (
    AggregationError,
    HeldUpdates,
    RunningWeightedSum,
    clip_delta,
    coordinate_median,
    delta_norm,
    norm_filtered_mean,
    trimmed_mean,
    weighted_average,
)
from lpfl.strategy import (
    Aggregation,
    ClientUpdate,
    FedAvg,
    FedMedian,
    FedNormFilter,
    FedTrimmedAvg,
    make_strategy,
)


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


def test_an_empty_running_sum_has_no_result() -> None:
    with pytest.raises(AggregationError, match="no updates"):
        RunningWeightedSum().result()


def test_strategy_samples_deterministically_and_weights_by_examples() -> None:
    strategy = FedAvg(2, seed=3, round_settings=lambda r: {"round_lr": r})
    clients = [f"c{i}" for i in range(6)]
    first = strategy.configure(1, clients)
    assert len(first) == 2 and first == strategy.configure(1, list(reversed(clients)))
    assert all(task == {"round_lr": 1} for task in first.values())
    picks = {tuple(strategy.sample(r, clients)) for r in range(1, 20)}
    assert len(picks) > 3  # different rounds sample different clients
    assert FedAvg(10, 0, lambda r: {}).sample(1, clients) == sorted(clients)
    updates = [ClientUpdate("x", {"w": torch.tensor([0.0])}, 1),
               ClientUpdate("y", {"w": torch.tensor([4.0])}, 3)]
    assert float(strategy.aggregate(updates)["w"]) == pytest.approx(3.0)


def _states(count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"a": rng.normal(size=(3, 4)), "b": rng.normal(size=7)} for _ in range(count)]


def _torch(state: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v).float() for k, v in state.items()}


def _stack(states: list[dict[str, np.ndarray]], key: str) -> np.ndarray:
    return np.stack([s[key].astype(np.float32).astype(np.float64) for s in states])


@pytest.mark.parametrize("count", [1, 4, 5])
def test_coordinate_median_equals_numpy_median(count: int) -> None:
    states = _states(count)
    got = coordinate_median([_torch(s) for s in states])
    for key in ("a", "b"):
        np.testing.assert_allclose(got[key].numpy(), np.median(_stack(states, key), axis=0),
                                   rtol=1e-6)


@pytest.mark.parametrize(("count", "fraction"), [(10, 0.2), (7, 0.3), (3, 0.0), (5, 0.1)])
def test_trimmed_mean_equals_numpy_sort_and_slice(count: int, fraction: float) -> None:
    states = _states(count, seed=1)
    got = trimmed_mean([_torch(s) for s in states], fraction)
    cut = int(fraction * count)
    for key in ("a", "b"):
        expected = np.sort(_stack(states, key), axis=0)[cut : count - cut].mean(axis=0)
        np.testing.assert_allclose(got[key].numpy(), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(AggregationError, match="trim fraction"):
        trimmed_mean([_torch(s) for s in states], 0.5)


def test_norm_filter_drops_far_updates_and_weights_the_rest() -> None:
    states = _states(6, seed=2)
    states[4] = {k: v * 1000 for k, v in states[4].items()}  # scaled
    states[5] = {k: -v * 50 for k, v in states[0].items()}  # sign-flipped and boosted
    weights = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    got = norm_filtered_mean([_torch(s) for s in states], weights, 3.0)
    for key in ("a", "b"):
        expected = np.average(_stack(states[:4], key), axis=0, weights=weights[:4])
        np.testing.assert_allclose(got[key].numpy(), expected, rtol=1e-5, atol=1e-6)


def test_held_updates_apply_their_rule_to_all_they_hold() -> None:
    acc = HeldUpdates(lambda states, weights: coordinate_median(states))
    with pytest.raises(AggregationError, match="no updates"):
        acc.result()
    acc.add({"a": torch.tensor([1.0, 5.0])}, 1.0)
    acc.add({"a": torch.tensor([3.0, 1.0])}, 2.0)
    assert acc.count == 2
    assert torch.equal(acc.result()["a"], torch.tensor([2.0, 3.0]))


def test_clipping_scales_the_change_to_the_bound() -> None:
    reference = {"w": torch.tensor([1.0, 1.0])}
    state = {"w": torch.tensor([4.0, 5.0])}
    norm = delta_norm(state, reference)
    assert norm == pytest.approx(5.0)
    clipped = clip_delta(state, reference, norm, 1.0)
    assert torch.allclose(clipped["w"], torch.tensor([1.6, 1.8]))


@pytest.mark.parametrize(("aggregation", "kind"), [
    (Aggregation.FEDAVG, FedAvg), (Aggregation.MEDIAN, FedMedian),
    (Aggregation.TRIMMED_MEAN, FedTrimmedAvg), (Aggregation.NORM_FILTER, FedNormFilter)])
def test_robust_strategies_sample_like_fedavg(aggregation: Aggregation, kind: type) -> None:
    strategy = make_strategy(aggregation, 2, 3, lambda r: {"r": r}, trim_fraction=0.2,
                             norm_multiplier=3.0)
    assert type(strategy) is kind
    clients = [f"c{i}" for i in range(6)]
    assert strategy.configure(4, clients) == FedAvg(2, 3, lambda r: {"r": r}).configure(4, clients)
    updates = [ClientUpdate(f"c{i}", {"w": torch.tensor([v])}, 1)
               for i, v in enumerate([1.0, 2.0, 3.0, 4.0, 100.0])]
    expected = {Aggregation.FEDAVG: 22.0, Aggregation.MEDIAN: 3.0,
                Aggregation.TRIMMED_MEAN: 3.0, Aggregation.NORM_FILTER: 2.5}[aggregation]
    assert float(strategy.aggregate(updates)["w"]) == pytest.approx(expected)
