"""build_federated_data: disjoint parts, the federation-wide labeled budget, every partition."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from lpfl.config import DataSettings
from lpfl.data import CORPORA, Example, FederatedData, build_federated_data, load_corpus
from lpfl.errors import DataError


def _settings(**changes: object) -> DataSettings:
    values: dict[str, object] = {"test_size": 1000, "validation_size": 200, "shots_per_class": 16,
                                 "unlabeled_per_client": 100, "num_clients": 4}
    values.update(changes)
    return DataSettings(**values)  # type: ignore[arg-type]


def _parts(data: FederatedData) -> list[Example]:
    return [*data.all_labeled(), *data.all_unlabeled(), *data.validation, *data.test]


def test_mr_has_duplicate_texts_so_disjointness_must_be_by_position() -> None:
    counts = Counter(example.text for example in load_corpus("mr"))
    assert max(counts.values()) > 1


@pytest.mark.parametrize("partition", ["iid", "dirichlet"])
def test_parts_are_disjoint_by_position_and_sized_as_configured(partition: str) -> None:
    corpus = load_corpus("mr")
    settings = _settings(partition=partition, alpha=0.3, test_limit=300)
    data = build_federated_data(settings, corpus, 2, seed=1)
    # A multiset bound: no corpus position can contribute an example to two parts (or twice).
    assert not Counter(_parts(data)) - Counter(corpus)
    assert len(data.labeled) == len(data.unlabeled) == 4
    assert Counter(example.label for example in data.all_labeled()) == {0: 16, 1: 16}
    assert all(client for client in data.labeled)
    assert len(data.all_unlabeled()) == 400
    assert (len(data.validation), len(data.test)) == (200, 300)


def test_identical_texts_are_still_kept_apart() -> None:
    corpus = [Example("same", i % 2, "toy") for i in range(300)]
    data = build_federated_data(_settings(test_size=50, validation_size=20, shots_per_class=5,
                                          unlabeled_per_client=10), corpus, 2, seed=0)
    assert len(_parts(data)) == 10 + 40 + 20 + 50 <= len(corpus)


def test_iid_clients_get_near_equal_shares() -> None:
    data = build_federated_data(_settings(shots_per_class=9), load_corpus("mr"), 2, seed=2)
    assert [len(client) for client in data.labeled] == [5, 5, 4, 4]
    assert [len(client) for client in data.unlabeled] == [100] * 4


def test_test_set_ignores_the_seed_and_the_rest_follows_it() -> None:
    corpus = load_corpus("mr")
    first, again, other = (build_federated_data(_settings(), corpus, 2, seed=s) for s in (5, 5, 6))
    assert first == again
    assert first.test == other.test
    assert first.labeled != other.labeled
    assert first.validation != other.validation


def _positive_fraction(examples: tuple[Example, ...]) -> float:
    return float(np.mean([example.label for example in examples]))


def test_dirichlet_skews_labeled_and_unlabeled_the_same_way() -> None:
    corpus = load_corpus("mr")
    gaps = []
    for seed in range(6):
        data = build_federated_data(_settings(partition="dirichlet", alpha=0.1), corpus, 2, seed)
        gaps += [abs(_positive_fraction(lab) - _positive_fraction(unl))
                 for lab, unl in zip(data.labeled, data.unlabeled, strict=True)
                 if len(lab) >= 4 and len(unl) >= 20]
    assert len(gaps) >= 6
    assert float(np.mean(gaps)) < 0.2


def test_dirichlet_never_leaves_a_client_without_labeled_examples() -> None:
    corpus = load_corpus("mr")
    settings = _settings(partition="dirichlet", alpha=0.05, num_clients=8, shots_per_class=4,
                         unlabeled_per_client=10)
    for seed in range(20):
        data = build_federated_data(settings, corpus, 2, seed)
        assert all(data.labeled)
        assert len(data.all_labeled()) == 8


def test_domain_partition_keeps_each_client_inside_its_domain() -> None:
    corpus = load_corpus("domains")
    data = build_federated_data(_settings(partition="domain", shots_per_class=10), corpus, 2, 0)
    expected = sorted(CORPORA)
    for client, (lab, unl) in enumerate(zip(data.labeled, data.unlabeled, strict=True)):
        assert {example.domain for example in lab + unl} == {expected[client]}
        assert len(unl) == 100
    assert [len(client) for client in data.labeled] == [5, 5, 5, 5]
    assert Counter(example.label for example in data.all_labeled()) == {0: 10, 1: 10}
    assert not Counter(_parts(data)) - Counter(corpus)


def test_budget_smaller_than_the_federation_is_rejected() -> None:
    with pytest.raises(DataError, match=r"cannot give each of data\.num_clients=5 clients one"):
        build_federated_data(_settings(shots_per_class=2, num_clients=5), load_corpus("mr"), 2, 0)


def test_too_few_unlabeled_texts_is_rejected() -> None:
    with pytest.raises(DataError, match="unlabeled_per_client"):
        build_federated_data(_settings(unlabeled_per_client=5000), load_corpus("mr"), 2, 0)


def test_a_domain_too_small_for_its_share_names_the_client() -> None:
    corpus = load_corpus("mr") + [Example("tiny", i % 2, "tiny") for i in range(40)]
    with pytest.raises(DataError, match=r"client 1 \(tiny\)"):
        build_federated_data(_settings(partition="domain", num_clients=2), corpus, 2, 0)
