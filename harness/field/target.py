"""The accuracy a field run's time to target is measured against, and where it came from.

``--target-accuracy`` gives it by hand; ``--target-from RESULTS.json`` takes the final accuracy
of a reference run on the same test split: a ``lpfl simulate`` results file (centralized or
FP-FL, the mean over its seeds) or an aggregator's ``results.json`` (:func:`lpfl.compare.
load_results` reads both). Without either, the report computes one from the runs themselves
(:func:`lpfl.harness.field.report.default_target`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lpfl.compare import load_results
from lpfl.errors import LpflError

SPLIT_KEYS = ("dataset", "test_size", "test_limit", "test_file")
"""The ``[data]`` settings that fix the test split: a reference that differs in one of them was
measured on other texts."""


@dataclass(frozen=True)
class Target:
    """A target accuracy in (0, 1] and a phrase saying where it came from."""

    accuracy: float
    source: str

    def __post_init__(self) -> None:
        if not 0 < self.accuracy <= 1 or not math.isfinite(self.accuracy):
            raise LpflError(f"target accuracy {self.accuracy!r} must be in (0, 1]")
        if not self.source:
            raise LpflError("a target accuracy needs its source")


def given_target(accuracy: float) -> Target:
    """``--target-accuracy``."""
    return Target(accuracy, "given with --target-accuracy")


def target_from_results(path: Path, method: str | None,
                        data: dict[str, Any] | None = None) -> Target:
    """The mean final accuracy of ``method`` in a results file (any method, if the file holds
    only one). With ``data`` (the field run's ``[data]`` table), refuse a reference whose
    test split differs."""
    results = load_results(path)
    methods = sorted({r.method for r in results.runs})
    if method is None:
        if len(methods) != 1:
            raise LpflError(f"{results.path} holds {', '.join(methods) or 'no runs'}: choose "
                            "one with --target-method")
        method = methods[0]
    finals = [r.final_accuracy for r in results.runs
              if r.method == method and r.final_accuracy is not None]
    if not finals:
        raise LpflError(f"{results.path} has no final accuracy of {method}; it holds "
                        f"{', '.join(methods) or 'no runs'}")
    reference = dict(results.config.get("data") or {})
    differing = [k for k in SPLIT_KEYS if data is not None and k in reference
                 and reference[k] != data.get(k)]
    if differing:
        raise LpflError(f"{results.path} was measured on another test split (data."
                        f"{differing[0]} = {reference[differing[0]]!r}, this run has "
                        f"{data.get(differing[0]) if data else None!r}); use a reference "
                        "run of the same data settings")
    seeds = f"the mean of {len(finals)} seeds" if len(finals) > 1 else "one seed"
    return Target(sum(finals) / len(finals),
                  f"the final accuracy of {method} in {results.path} ({seeds})")
