"""The one rule for combining the metrics clients report beside their updates.

Each client reports numbers with its update (``train_loss``, ``soft_labels_added``,
``compute_seconds``, ...). Wherever a round's reports become one figure each (the round
machine's ``train_metrics``, the simulation's round rows, the reports), the rule is:

* A **count** is summed over the clients. A metric is a count when its name ends in one of
  :data:`COUNT_SUFFIXES`: ``soft_labels_added``, ``soft_label_correct``,
  ``soft_label_checked``, ``pool_checked``, ``teacher_pool_correct``, ...
* Any other metric (a loss, a share, seconds, bytes of memory) is **example-weighted**:
  ``sum(n_i * x_i) / sum(n_i)`` over the clients that report it, ``n_i`` being each client's
  ``num_examples``, the weight FedAvg gives its update.

A rate of two counts is pooled from their sums (:func:`pooled_rate`), never averaged over
clients. A new metric named by this convention is combined the same way everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

COUNT_SUFFIXES = ("_added", "_correct", "_checked")
"""Name endings of the metrics that count things and are summed over clients."""

ClientMetrics = tuple[int, Mapping[str, float]]
"""One client's report: its ``num_examples`` and its metrics."""


def is_count(name: str) -> bool:
    """Whether the metric ``name`` counts things (summed) rather than measures them (weighted)."""
    return name.endswith(COUNT_SUFFIXES)


def combine_client_metrics(reports: Iterable[ClientMetrics]) -> dict[str, float]:
    """Each metric over all ``(num_examples, metrics)`` reports, by the rule of this module:
    counts summed, everything else example-weighted; names sorted. Raises :class:`ValueError`
    for a report with fewer than one example (it would have no weight)."""
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    for num_examples, metrics in reports:
        if num_examples < 1:
            raise ValueError(f"a client report needs num_examples >= 1, got {num_examples}")
        for name, value in metrics.items():
            counted = is_count(name)
            sums[name] = sums.get(name, 0.0) + (value if counted else value * num_examples)
            if not counted:
                weights[name] = weights.get(name, 0.0) + num_examples
    return {name: sums[name] / weights[name] if name in weights else sums[name]
            for name in sorted(sums)}


def pooled_rate(combined: Mapping[str, float], correct: str, checked: str) -> float | None:
    """``combined[correct] / combined[checked]`` of two summed counts; ``None`` when nothing
    was checked."""
    total = combined.get(checked, 0.0)
    return combined.get(correct, 0.0) / total if total else None
