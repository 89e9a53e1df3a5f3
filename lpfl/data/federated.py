"""Turn one dataset into what a federated run needs: per-client labeled and unlabeled texts, a
validation set and the fixed test set (or the run's own test and validation files).

The labeled budget (``shots_per_class`` per class) belongs to the whole federation, so the
centralized baseline trains on exactly :meth:`FederatedData.all_labeled`. Every part is drawn by
position, so labeled, unlabeled, validation and test never share an item, even where the corpus
repeats a sentence.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lpfl.config import DataSettings
from lpfl.data.examples import Example
from lpfl.data.partition import (
    dirichlet_proportions,
    partition_domain,
    partition_iid,
    split_by_proportions,
)
from lpfl.data.splits import few_shot_indices, fixed_split_indices
from lpfl.errors import DataError

logger = logging.getLogger(__name__)

Parts = list[list[int]]
"""Positions in the source examples, one list per client."""

TEST_PERCENT = 20
"""The most of a too-small dataset the carved test split takes (see :func:`carved_sizes`)."""
VALIDATION_PERCENT = 10
"""The most of a too-small dataset the carved validation split takes."""


@dataclass(frozen=True)
class FederatedData:
    """Per-client labeled and unlabeled examples plus the shared validation and test sets.

    The labels of ``unlabeled`` are the hidden truth, for diagnostics only (e.g. the accuracy of
    soft labels); training must not read them.
    """

    labeled: tuple[tuple[Example, ...], ...]
    unlabeled: tuple[tuple[Example, ...], ...]
    validation: tuple[Example, ...]
    test: tuple[Example, ...]

    def all_labeled(self) -> list[Example]:
        """Every client's labeled examples, in client order: the centralized training set."""
        return [example for client in self.labeled for example in client]

    def all_unlabeled(self) -> list[Example]:
        """Every client's unlabeled examples, in client order."""
        return [example for client in self.unlabeled for example in client]


def carved_sizes(settings: DataSettings, size: int, num_classes: int, test_file: bool = False,
                 validation_file: bool = False) -> tuple[int, int]:
    """The test and validation sizes to carve out of a dataset of ``size`` examples.

    ``settings.test_size`` and ``settings.validation_size`` (0 for a split read from its own
    file) when they leave the training pool its labeled budget and unlabeled texts
    (``shots_per_class * num_classes + unlabeled_per_client * num_clients``). Otherwise the
    dataset is too small for them: the test split takes at most :data:`TEST_PERCENT` % of it
    (at least 1 example) and validation at most :data:`VALIDATION_PERCENT` %, with a warning that
    says what was used. A run that fits is never changed.
    """
    test = 0 if test_file else settings.test_size
    validation = 0 if validation_file else settings.validation_size
    training = (settings.shots_per_class * num_classes
                + settings.unlabeled_per_client * settings.num_clients)
    if test + validation + training <= size:
        return test, validation
    capped = (min(test, max(1, size * TEST_PERCENT // 100)),
              min(validation, size * VALIDATION_PERCENT // 100))
    if capped != (test, validation):
        logger.warning("data.dataset=%r has %d examples, fewer than the %d test + %d validation + "
                       "%d training examples the run asks for: carving a test split of %d (at most "
                       "%d%% of the data) and a validation split of %d (at most %d%%); set "
                       "data.test_size and data.validation_size, or data.test_file and "
                       "data.validation_file, to choose", settings.dataset, size, test,
                       validation, training, capped[0], TEST_PERCENT, capped[1],
                       VALIDATION_PERCENT)
    return capped


def build_federated_data(settings: DataSettings, examples: Sequence[Example], num_classes: int,
                         seed: int, test: Sequence[Example] | None = None,
                         validation: Sequence[Example] | None = None) -> FederatedData:
    """Split ``examples`` into test, validation and per-client labeled/unlabeled parts.

    ``test`` / ``validation`` (e.g. read from ``data.test_file`` / ``data.validation_file``)
    replace the split of that name: nothing is carved out of ``examples`` for it. The carved
    sizes are :func:`carved_sizes`'s (the configured ones unless the dataset is too small).

    1. The test set is the fixed split (independent of ``seed``), cut to ``settings.test_limit``.
    2. The rest is shuffled with ``seed``; the first ``validation_size`` items are validation.
    3. ``iid``/``dirichlet``: ``shots_per_class`` per class are drawn from the remaining pool and
       spread over the clients, then ``unlabeled_per_client * num_clients`` unlabeled texts.
       ``dirichlet`` draws one class-by-client proportion matrix and applies it to both, so a
       client's unlabeled texts are skewed like its labeled ones; a client left without a labeled
       example takes one from the largest client (chosen with ``rng``, so still seeded).
    4. ``domain``: the pool is split by domain first (:func:`partition_domain`); each client then
       draws its labeled examples from its own domain (the budget is dealt out one example at a
       time, class by class, so clients get equal shares within one) and
       ``unlabeled_per_client`` unlabeled texts from the same domain.
    """
    test_size, validation_size = carved_sizes(settings, len(examples), num_classes,
                                              test is not None, validation is not None)
    if test is None:
        train, held_out = fixed_split_indices([example.label for example in examples], test_size)
        test = [examples[i] for i in held_out]
    else:
        train = list(range(len(examples)))
    test = test[: settings.test_limit or None]
    rng = np.random.default_rng(seed)
    pool = rng.permutation(np.asarray(train, dtype=np.int64)).tolist()
    if validation is None:
        if validation_size >= len(pool):
            raise DataError(f"data.validation_size={validation_size} leaves no training data: "
                            f"only {len(pool)} examples remain after the test split")
        validation = [examples[i] for i in pool[:validation_size]]
        pool = pool[validation_size:]
    budget = settings.shots_per_class * num_classes
    if budget < settings.num_clients:
        raise DataError(f"{budget} labeled examples (data.shots_per_class="
                        f"{settings.shots_per_class} x {num_classes} classes) cannot give each of "
                        f"data.num_clients={settings.num_clients} clients one; raise "
                        "shots_per_class")
    labels = [example.label for example in examples]
    if settings.partition == "domain":
        labeled, unlabeled = _by_domain(settings, examples, labels, pool, num_classes, rng)
    else:
        labeled, unlabeled = _by_label(settings, labels, pool, num_classes, rng)
    data = FederatedData(
        labeled=tuple(tuple(examples[i] for i in part) for part in labeled),
        unlabeled=tuple(tuple(examples[i] for i in part) for part in unlabeled),
        validation=tuple(validation),
        test=tuple(test),
    )
    logger.info("federated data (%s, seed %d): labeled per client %s, unlabeled per client %s, "
                "validation %d, test %d", settings.partition, seed,
                [len(part) for part in labeled], [len(part) for part in unlabeled],
                len(validation), len(test))
    return data


def _by_label(settings: DataSettings, labels: Sequence[int], pool: list[int], num_classes: int,
              rng: np.random.Generator) -> tuple[Parts, Parts]:
    """Labeled and unlabeled parts for the ``iid`` and ``dirichlet`` partitions."""
    chosen = set(few_shot_indices([labels[i] for i in pool],
                                  [settings.shots_per_class] * num_classes, rng,
                                  "the training pool"))
    labeled = [item for position, item in enumerate(pool) if position in chosen]
    rest = [item for position, item in enumerate(pool) if position not in chosen]
    unlabeled = _take(rest, settings.unlabeled_per_client, settings.num_clients, "the pool")
    if settings.partition == "iid":
        return (_gather(labeled, partition_iid(len(labeled), settings.num_clients, rng)),
                _gather(unlabeled, partition_iid(len(unlabeled), settings.num_clients, rng)))
    proportions = dirichlet_proportions(num_classes, settings.num_clients, settings.alpha, rng)
    labeled_parts = split_by_proportions([labels[i] for i in labeled], proportions, rng)
    _give_each_client_one(labeled_parts, rng)
    unlabeled_parts = split_by_proportions([labels[i] for i in unlabeled], proportions, rng)
    return _gather(labeled, labeled_parts), _gather(unlabeled, unlabeled_parts)


def _by_domain(settings: DataSettings, examples: Sequence[Example], labels: Sequence[int],
               pool: list[int], num_classes: int, rng: np.random.Generator) -> tuple[Parts, Parts]:
    """Labeled and unlabeled parts for the ``domain`` partition, drawn client by client."""
    client_pools = _gather(pool, partition_domain([examples[i].domain for i in pool],
                                                  settings.num_clients))
    quotas = np.zeros((settings.num_clients, num_classes), dtype=np.int64)
    for slot in range(settings.shots_per_class * num_classes):
        quotas[slot % settings.num_clients, slot // settings.shots_per_class] += 1
    labeled: Parts = []
    unlabeled: Parts = []
    for client, client_pool in enumerate(client_pools):
        where = f"client {client} ({', '.join(sorted({examples[i].domain for i in client_pool}))})"
        chosen = set(few_shot_indices([labels[i] for i in client_pool], quotas[client].tolist(),
                                      rng, where))
        labeled.append([item for position, item in enumerate(client_pool) if position in chosen])
        rest = [item for position, item in enumerate(client_pool) if position not in chosen]
        unlabeled.append(_take(rest, settings.unlabeled_per_client, 1, where))
    return labeled, unlabeled


def _take(items: list[int], per_client: int, clients: int, where: str) -> list[int]:
    count = per_client * clients
    if count > len(items):
        raise DataError(f"{where} has {len(items)} unlabeled texts left but {count} are needed; "
                        f"set data.unlabeled_per_client to at most {len(items) // clients}, or "
                        "lower data.num_clients, data.test_size or data.validation_size")
    return items[:count]


def _gather(items: Sequence[int], parts: Parts) -> Parts:
    """Map per-client positions in ``items`` to the items themselves."""
    return [[items[position] for position in part] for part in parts]


def _give_each_client_one(parts: Parts, rng: np.random.Generator) -> None:
    """Move one random item from the largest client to each client that has none (in place)."""
    for empty in [client for client, part in enumerate(parts) if not part]:
        donor = max(parts, key=len)
        parts[empty].append(donor.pop(int(rng.integers(len(donor)))))
