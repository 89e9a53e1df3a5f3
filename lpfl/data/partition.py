"""Spread item positions over clients: IID, Dirichlet label skew, or one domain per client.

Every partitioner returns one list of positions per client and assigns every position exactly
once. Randomness comes only from the ``rng`` argument, so a partition is reproducible from a seed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)


def partition_iid(n_items: int, num_clients: int, rng: np.random.Generator) -> list[list[int]]:
    """Shuffle ``range(n_items)`` and cut it into ``num_clients`` parts (sizes differ by <= 1)."""
    return [part.tolist() for part in np.array_split(rng.permutation(n_items), num_clients)]


def partition_dirichlet(labels: Sequence[int], num_clients: int, alpha: float, num_classes: int,
                        rng: np.random.Generator) -> list[list[int]]:
    """Label skew: each class is split over the clients in proportions drawn from Dir(alpha).

    Small ``alpha`` (0.1) gives each client a few dominant classes, large ``alpha`` (100) is
    close to IID. A client may get no item of a class, or no item at all.
    """
    return split_by_proportions(labels, dirichlet_proportions(num_classes, num_clients, alpha, rng),
                                rng)


def dirichlet_proportions(num_classes: int, num_clients: int, alpha: float,
                          rng: np.random.Generator) -> npt.NDArray[np.float64]:
    """A ``(num_classes, num_clients)`` matrix: row ``c`` is the share of class ``c`` per client.

    Drawn once and given to :func:`split_by_proportions` for several item sets, it skews them the
    same way (a client heavy in positives gets positive labeled and unlabeled texts).
    """
    return rng.dirichlet(np.full(num_clients, alpha), size=num_classes)


def split_by_proportions(labels: Sequence[int], proportions: npt.NDArray[np.float64],
                         rng: np.random.Generator) -> list[list[int]]:
    """Give client ``k`` the share ``proportions[c, k]`` of the (shuffled) items of class ``c``.

    Shares are rounded down at the cumulative cut points, so each class is split exactly. Each
    client's list is shuffled, so its classes are interleaved.
    """
    num_classes, num_clients = proportions.shape
    array = np.asarray(labels, dtype=np.int64)
    if array.size and not (array.min() >= 0 and array.max() < num_classes):
        raise ValueError(f"labels must be class indices 0..{num_classes - 1}, "
                         f"found {int(array.min())}..{int(array.max())}")
    parts: list[list[int]] = [[] for _ in range(num_clients)]
    for label in range(num_classes):
        items = rng.permutation(np.flatnonzero(array == label))
        cuts = np.floor(np.cumsum(proportions[label])[:-1] * items.size).astype(np.int64)
        for part, chunk in zip(parts, np.split(items, cuts), strict=True):
            part.extend(chunk.tolist())
    return [rng.permutation(np.asarray(part, dtype=np.int64)).tolist() for part in parts]


def partition_domain(domains: Sequence[str], num_clients: int) -> list[list[int]]:
    """Domain skew: client ``i`` and domain ``j`` (in sorted name order) are paired when
    ``i ≡ j (mod m)``, with ``m = min(num_clients, number of domains)``.

    So with as many clients as domains each client holds one domain; with more clients, the
    clients that share a domain get its items in turn (round-robin in input order, so sizes
    differ by at most one); with fewer clients, a client holds several domains. A dataset with a
    single domain degenerates to an even split, which is logged as a warning. Deterministic: it
    uses no randomness (shuffle the input first for a random assignment).
    """
    names = sorted(set(domains))
    shared = min(num_clients, len(names))
    if len(names) == 1 and num_clients > 1:
        logger.warning("domain partition: the data has one domain (%s); splitting it evenly "
                       "over %d clients", names[0], num_clients)
    elif len(names) > num_clients:
        logger.warning("domain partition: %d domains over %d clients; some clients hold "
                       "several domains", len(names), num_clients)
    owners = {name: [i for i in range(num_clients) if i % shared == j % shared]
              for j, name in enumerate(names)}
    parts: list[list[int]] = [[] for _ in range(num_clients)]
    dealt = dict.fromkeys(names, 0)
    for position, name in enumerate(domains):
        clients = owners[name]
        parts[clients[dealt[name] % len(clients)]].append(position)
        dealt[name] += 1
    return parts
