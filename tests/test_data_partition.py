"""Partitioners assign every item once; Dirichlet skew is real; domains map to clients."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from lpfl.data import partition_dirichlet, partition_domain, partition_iid


def _assigned_once(parts: list[list[int]], n_items: int) -> bool:
    return sorted(item for part in parts for item in part) == list(range(n_items))


def test_iid_sizes_differ_by_at_most_one_and_are_shuffled() -> None:
    parts = partition_iid(103, 4, np.random.default_rng(0))
    assert [len(part) for part in parts] == [26, 26, 26, 25]
    assert _assigned_once(parts, 103)
    assert parts[0] != sorted(parts[0])


def _mean_max_class_fraction(alpha: float, seed: int) -> float:
    labels = [label for label in range(4) for _ in range(250)]
    parts = partition_dirichlet(labels, 10, alpha, 4, np.random.default_rng(seed))
    assert _assigned_once(parts, len(labels))
    fractions = [np.bincount([labels[i] for i in part], minlength=4).max() / len(part)
                 for part in parts if part]
    return float(np.mean(fractions))


def test_dirichlet_small_alpha_skews_labels_and_large_alpha_does_not() -> None:
    skewed = [_mean_max_class_fraction(0.1, seed) for seed in range(5)]
    uniform = [_mean_max_class_fraction(100.0, seed) for seed in range(5)]
    assert min(skewed) > 0.7
    assert max(uniform) < 0.35


def test_dirichlet_rejects_labels_outside_the_classes() -> None:
    with pytest.raises(ValueError, match=r"class indices 0\.\.1"):
        partition_dirichlet([0, 1, 2], 2, 1.0, 2, np.random.default_rng(0))


def test_domain_partition_gives_each_client_one_domain_in_sorted_order() -> None:
    domains = ["nyt", "mr", "tweets", "mr", "amazon", "nyt", "tweets", "amazon"]
    parts = partition_domain(domains, 4)
    assert [{domains[i] for i in part} for part in parts] == [
        {"amazon"}, {"mr"}, {"nyt"}, {"tweets"}]
    assert _assigned_once(parts, len(domains))


def test_clients_sharing_a_domain_split_it_evenly() -> None:
    domains = ["a"] * 7 + ["b"] * 4
    parts = partition_domain(domains, 5)
    assert [{domains[i] for i in part} for part in parts] == [{"a"}, {"b"}, {"a"}, {"b"}, {"a"}]
    assert [len(part) for part in parts] == [3, 2, 2, 2, 2]
    assert _assigned_once(parts, len(domains))


def test_fewer_clients_than_domains_hold_several(caplog: pytest.LogCaptureFixture) -> None:
    domains = ["a", "b", "c"]
    with caplog.at_level(logging.WARNING):
        parts = partition_domain(domains, 2)
    assert parts == [[0, 2], [1]]
    assert "several domains" in caplog.text


def test_a_single_domain_is_split_evenly_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        parts = partition_domain(["only"] * 5, 2)
    assert parts == [[0, 2, 4], [1, 3]]
    assert "one domain" in caplog.text
