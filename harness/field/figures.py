"""The plot style every field figure shares: the accuracy-over-a-running-total plot and the
saving of a figure."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def label(run: Mapping[str, Any]) -> str:
    """A run's name in legends and tables: method / profile (or fleet)."""
    return f"{run['method']} / {run['profile']['name']}"


def accuracy_plot(runs: Sequence[dict[str, Any]], style: Mapping[str, str],
                  key: Callable[[dict[str, Any]], float], xlabel: str, target: float | None,
                  path: Path) -> None:
    """Accuracy after each measured round against the running sum of ``key(row)``; ``style``
    maps each run's :func:`label` to its colour."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for run in runs:
        total, xs, ys = 0.0, [], []
        for row in run["rounds"]:
            total += key(row)
            if row["accuracy"] is not None:
                xs.append(total)
                ys.append(row["accuracy"])
        ax.plot(xs, ys, "o-", color=style[label(run)], label=label(run))
    if target is not None:
        ax.axhline(target, color="grey", ls=":", label=f"target {target:.1%}")
    ax.set(xscale="log", xlabel=xlabel, ylabel="test accuracy (measured rounds only)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    save(fig, path)


def colours(runs: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """One colour per run, by :func:`label`, from the default cycle."""
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {label(r): cycle[i % len(cycle)] for i, r in enumerate(runs)}


def save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
