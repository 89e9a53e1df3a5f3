"""The fixed test split and few-shot sampling.

The test split is drawn with its own seed, :data:`SPLIT_SEED`, so every run seed, method and
machine evaluates on the same texts. Both functions work on indices internally (the ``*_indices``
variants), because a corpus may hold the same sentence twice and the split must keep the two
copies apart only by position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lpfl.data.examples import Example
from lpfl.errors import DataError

SPLIT_SEED: int = 20240601
"""Seed of the fixed test split; independent of the run seed on purpose."""


@dataclass(frozen=True)
class Split:
    """A train pool and a held-out test set, disjoint by position in the source list."""

    train: tuple[Example, ...]
    test: tuple[Example, ...]


def fixed_split(examples: Sequence[Example], test_size: int) -> Split:
    """Hold out ``test_size`` examples, stratified by label, the same way on every machine.

    The test set is in random order (so ``test[:n]`` is still roughly stratified); the train pool
    keeps the input order.
    """
    train, test = fixed_split_indices([example.label for example in examples], test_size)
    return Split(train=tuple(examples[i] for i in train), test=tuple(examples[i] for i in test))


def fixed_split_indices(labels: Sequence[int], test_size: int) -> tuple[list[int], list[int]]:
    """Positions of the train pool and of the test set for :func:`fixed_split`.

    Each class gets its share of ``test_size`` by largest remainder (ties to the lower class), so
    the test set has exactly ``test_size`` items with the data's class proportions.
    """
    if not 1 <= test_size < len(labels):
        raise DataError(f"data.test_size={test_size} must be at least 1 and smaller than the "
                        f"dataset ({len(labels)} examples)")
    array = np.asarray(labels, dtype=np.int64)
    classes = np.unique(array)
    counts = np.array([np.count_nonzero(array == c) for c in classes])
    exact = test_size * counts / len(labels)
    quotas = np.floor(exact).astype(np.int64)
    by_remainder = np.argsort(quotas - exact, kind="stable")
    quotas[by_remainder[: test_size - int(quotas.sum())]] += 1
    rng = np.random.default_rng(SPLIT_SEED)
    chosen = [rng.permutation(np.flatnonzero(array == c))[:q] for c, q in zip(classes, quotas,
                                                                              strict=True)]
    test = rng.permutation(np.concatenate(chosen))
    in_test = np.zeros(len(labels), dtype=bool)
    in_test[test] = True
    return np.flatnonzero(~in_test).tolist(), test.tolist()


def few_shot(pool: Sequence[Example], shots_per_class: int, num_classes: int,
             rng: np.random.Generator) -> list[Example]:
    """Draw exactly ``shots_per_class`` examples of every class from ``pool``, in pool order."""
    chosen = few_shot_indices([example.label for example in pool],
                              [shots_per_class] * num_classes, rng, "the training pool")
    return [pool[i] for i in chosen]


def few_shot_indices(labels: Sequence[int], per_class: Sequence[int], rng: np.random.Generator,
                     where: str) -> list[int]:
    """Sorted positions of ``per_class[c]`` randomly chosen items of each class ``c``.

    ``where`` names the pool in the error raised when a class has too few items.
    """
    array = np.asarray(labels, dtype=np.int64)
    chosen: list[int] = []
    for label, shots in enumerate(per_class):
        candidates = np.flatnonzero(array == label)
        if candidates.size < shots:
            raise DataError(f"{where} has only {candidates.size} examples of class {label} but "
                            f"{shots} are needed; lower data.shots_per_class or use more data")
        chosen.extend(rng.choice(candidates, size=shots, replace=False).tolist())
    return sorted(chosen)
