"""``report.md`` and its plots, made from ``results.json`` alone (so a report can be rebuilt).

Plots: accuracy per round per method, and bytes sent per round per method (log scale, where the
orders of magnitude between LP-FL and FP-FL are the point).
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

Run = Mapping[str, Any]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _by_method(runs: Sequence[Run]) -> dict[str, list[Run]]:
    grouped: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        grouped[run["method"]].append(run)
    return dict(grouped)


def summary_table(runs: Sequence[Run]) -> str:
    """Markdown: final accuracy (mean ± std over seeds) and mean bytes per round per method."""
    lines = ["| method | seeds | final accuracy | uplink / round | downlink / round |",
             "|---|---|---|---|---|"]
    for method, group in _by_method(runs).items():
        acc, std = mean_std([r["final_accuracy"] for r in group])
        fed_rounds = [x for r in group for x in r["rounds"] if x["round"] > 0]
        up = statistics.fmean([x["uplink_bytes"] for x in fed_rounds]) if fed_rounds else 0.0
        down = statistics.fmean([x["downlink_bytes"] for x in fed_rounds]) if fed_rounds else 0.0
        extra = ""
        if "raw_accuracy" in group[0]:
            raw, _ = mean_std([r["raw_accuracy"] for r in group])
            extra = f" (raw {raw:.3f})"
        lines.append(f"| {method} | {len(group)} | {acc:.3f} ± {std:.3f}{extra} | "
                     f"{human_bytes(up)} | {human_bytes(down)} |")
    return "\n".join(lines)


def _mean_curve(group: Sequence[Run], field: str) -> tuple[list[int], list[float]]:
    per_round: dict[int, list[float]] = defaultdict(list)
    for run in group:
        for record in run["rounds"]:
            if record["round"] > 0 and record.get(field) is not None:
                per_round[record["round"]].append(float(record[field]))
    xs = sorted(per_round)
    return xs, [statistics.fmean(per_round[x]) for x in xs]


def plot_accuracy(runs: Sequence[Run], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, group in _by_method(runs).items():
        if method == "zero-shot":
            ax.axhline(statistics.fmean(r["final_accuracy"] for r in group), linestyle=":",
                       color="grey", label="zero-shot (calibrated)")
            continue
        xs, ys = _mean_curve(group, "accuracy")
        ax.plot(xs, ys, marker="o", label=method)
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("test accuracy (mean over seeds)")
    ax.set_title("Accuracy per round")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_bytes(runs: Sequence[Run], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, group in _by_method(runs).items():
        xs, ys = _mean_curve(group, "uplink_bytes")
        if xs and max(ys) > 0:
            ax.plot(xs, ys, marker="o", label=f"{method} uplink")
    ax.set_yscale("log")
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("bytes sent by clients per round")
    ax.set_title("Uplink traffic per round (log scale)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def traffic_ratio(runs: Sequence[Run]) -> float | None:
    """FP-FL uplink per round divided by LP-FL's, where both ran."""
    grouped = _by_method(runs)
    if "lp-fl" not in grouped or "fp-fl" not in grouped:
        return None
    lp = statistics.fmean(x["uplink_bytes"] for r in grouped["lp-fl"] for x in r["rounds"])
    fp = statistics.fmean(x["uplink_bytes"] for r in grouped["fp-fl"] for x in r["rounds"])
    return fp / lp if lp else None


def write_report(out_dir: Path, title: str = "lpfl simulation") -> Path:
    """Write ``report.md``, ``accuracy.png`` and ``bytes.png`` next to ``results.json``."""
    results = json.loads((out_dir / "results.json").read_text(encoding="utf-8"))
    runs = results["runs"]
    plot_accuracy(runs, out_dir / "accuracy.png")
    plot_bytes(runs, out_dir / "bytes.png")
    ratio = traffic_ratio(runs)
    lines = [f"# {title}", "", summary_table(runs), ""]
    if ratio is not None:
        lines += [f"FP-FL clients send **{ratio:,.0f}×** the bytes LP-FL clients send per round.",
                  ""]
    lines += ["![accuracy per round](accuracy.png)", "", "![uplink per round](bytes.png)", "",
              "Per-round detail:", "",
              "| method | seed | round | accuracy | soft labels | soft-label acc. | uplink | s |",
              "|---|---|---|---|---|---|---|---|"]
    for run in runs:
        for x in run["rounds"]:
            acc, soft_acc = x.get("accuracy"), x.get("soft_label_accuracy")
            lines.append(f"| {run['method']} | {run['seed']} | {x['round']} | "
                         f"{'-' if acc is None else f'{acc:.3f}'} | {x['soft_labels_added']} | "
                         f"{'-' if soft_acc is None else f'{soft_acc:.3f}'} | "
                         f"{human_bytes(x['uplink_bytes'])} | {x['seconds']:.1f} |")
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
