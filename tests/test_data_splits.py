"""The fixed test split is deterministic, stratified and seed-independent; few-shot is exact."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from lpfl.data import Example, few_shot, fixed_split, load_corpus
from lpfl.data.splits import fixed_split_indices
from lpfl.errors import DataError


def _labeled(labels: list[int]) -> list[Example]:
    return [Example(f"text {i}", label, "toy") for i, label in enumerate(labels)]


def test_mr_split_is_pinned_across_machines_and_numpy_versions() -> None:
    # Golden values: if these change, every published test score changes with them.
    train, test = fixed_split_indices([e.label for e in load_corpus("mr")], 1000)
    assert test[:8] == [5291, 3705, 2201, 7884, 9960, 3878, 9790, 2966]
    assert sum(test) == 5280313
    assert len(train) == 9568


def test_split_is_deterministic_and_partitions_the_input() -> None:
    examples = load_corpus("mr")
    first, second = fixed_split(examples, 1000), fixed_split(examples, 1000)
    assert first == second
    assert len(first.test) == 1000
    assert Counter(first.train) + Counter(first.test) == Counter(examples)


def test_split_keeps_class_proportions_with_largest_remainder() -> None:
    split = fixed_split(_labeled([0] * 70 + [1] * 20 + [2] * 10), 15)
    # Exact shares 10.5 / 3 / 1.5: floors 10 / 3 / 1, the spare item goes to the first tie.
    assert Counter(example.label for example in split.test) == {0: 11, 1: 3, 2: 1}
    mr = fixed_split(load_corpus("mr"), 1000)
    assert Counter(example.label for example in mr.test) == {0: 504, 1: 496}


def test_test_set_is_shuffled_across_classes() -> None:
    test = fixed_split(_labeled([0] * 50 + [1] * 50), 20).test
    assert {example.label for example in test[:6]} == {0, 1}


@pytest.mark.parametrize("size", [0, 100, 101])
def test_split_rejects_a_test_size_that_leaves_no_training_data(size: int) -> None:
    with pytest.raises(DataError, match=f"test_size={size}"):
        fixed_split(_labeled([0, 1] * 50), size)


def test_few_shot_takes_exactly_k_per_class_reproducibly() -> None:
    pool = _labeled([0] * 30 + [1] * 5 + [2] * 40)
    shots = few_shot(pool, 5, 3, np.random.default_rng(3))
    assert Counter(example.label for example in shots) == {0: 5, 1: 5, 2: 5}
    assert len(set(shots)) == 15
    assert shots == few_shot(pool, 5, 3, np.random.default_rng(3))
    assert shots != few_shot(pool, 5, 3, np.random.default_rng(4))


def test_few_shot_rejects_a_class_with_too_few_examples() -> None:
    with pytest.raises(DataError, match="only 2 examples of class 1 but 3 are needed"):
        few_shot(_labeled([0] * 10 + [1] * 2), 3, 2, np.random.default_rng(0))
