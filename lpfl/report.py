"""``report.md`` and ``report.png`` for a simulation or a websocket run, made from its results
alone (so a report can be rebuilt).

One writer for both (:func:`render_report`). A run is ``{"method", "seed", "final_accuracy",
"rounds": [row, ...]}``, each row a round's :meth:`~lpfl.records.RoundRecord.summary`; the rows
of a websocket run also carry the bytes measured on the connections (``wire_*``), shown beside
the payloads. ``lpfl simulate`` reports the runs of its ``results.json`` (:func:`write_report`);
``lpfl launch`` reports the server's rounds as one run, with what FP-FL clients would have sent
in the same rounds (``full_model_bytes`` per accepted update).

The figure shows accuracy per round per method, and uplink bytes per round per method on a log
scale, where the orders of magnitude between LP-FL and FP-FL are the point.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.ticker import MaxNLocator

Run = Mapping[str, Any]
"""A run: ``method``, ``seed``, ``final_accuracy`` and its ``rounds``' rows."""
Row = Mapping[str, Any]
"""A round's :meth:`~lpfl.records.RoundRecord.summary`."""
FIGURE = "report.png"


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


def _has_wire(runs: Sequence[Run]) -> bool:
    return any("wire_uplink_bytes" in x for r in runs for x in r["rounds"])


def _sent(row: Row) -> int:
    """What the round's clients sent: on the wire where measured, else their payloads."""
    return int(row.get("wire_uplink_bytes", row["uplink_bytes"]))


def summary_table(runs: Sequence[Run]) -> str:
    """Markdown: final accuracy (mean ± std over seeds) and mean bytes per round per method."""
    lines = ["| method | seeds | final accuracy | uplink / round | downlink / round |",
             "|---|---|---|---|---|"]
    for method, group in _by_method(runs).items():
        acc, std = mean_std([r["final_accuracy"] for r in group
                             if r["final_accuracy"] is not None])
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


def _mean_curve(group: Sequence[Run], value: str | Callable[[Row], float | None],
                ) -> tuple[list[int], list[float]]:
    """Per round, the mean over ``group``'s runs of ``value`` (a row key, or a function of the
    row); rounds where it is ``None`` are left out."""
    per_round: dict[int, list[float]] = defaultdict(list)
    for run in group:
        for row in run["rounds"]:
            y = row.get(value) if isinstance(value, str) else value(row)
            if row["round"] > 0 and y is not None:
                per_round[row["round"]].append(float(y))
    xs = sorted(per_round)
    return xs, [statistics.fmean(per_round[x]) for x in xs]


def _plot_accuracy(ax: Axes, runs: Sequence[Run]) -> None:
    for method, group in _by_method(runs).items():
        if method == "zero-shot":
            ax.axhline(statistics.fmean(r["final_accuracy"] for r in group), linestyle=":",
                       color="grey", label="zero-shot (calibrated)")
            continue
        xs, ys = _mean_curve(group, "accuracy")
        ax.plot(xs, ys, marker="o", label=method)
    ax.set_ylabel("test accuracy (mean over seeds)")
    ax.set_title("Accuracy per round")


def _plot_uplink(ax: Axes, runs: Sequence[Run], full_model_bytes: int | None) -> None:
    curves: list[tuple[str, str, tuple[list[int], list[float]]]] = []
    for method, group in _by_method(runs).items():
        curves.append((f"{method} uplink (payload)", "o", _mean_curve(group, "uplink_bytes")))
        curves.append((f"{method} uplink (wire)", "^", _mean_curve(group, "wire_uplink_bytes")))
    if full_model_bytes is not None:
        curves.append(("FP-FL uplink (payload)", "s", _mean_curve(
            runs, lambda row: full_model_bytes * len(row.get("clients", ())))))
    for label, marker, (xs, ys) in curves:
        if xs and max(ys) > 0:
            ax.plot(xs, ys, marker=marker, label=label)
    ax.set_yscale("log")
    ax.set_ylabel("bytes sent by clients per round")
    ax.set_title("Uplink per round (log scale)")


def plot(runs: Sequence[Run], path: Path, full_model_bytes: int | None = None) -> None:
    """Accuracy per round (left) and uplink bytes per round (right), per method."""
    fig, (acc_ax, bytes_ax) = plt.subplots(1, 2, figsize=(10, 4))
    _plot_accuracy(acc_ax, runs)
    _plot_uplink(bytes_ax, runs, full_model_bytes)
    for ax in (acc_ax, bytes_ax):
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3, which="both")
        if ax.get_legend_handles_labels()[0]:
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


def _fraction(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def detail_table(runs: Sequence[Run], full_model_bytes: int | None = None) -> list[str]:
    """Markdown lines: one row per run and round; with the wire bytes where the rows have them,
    and what FP-FL clients would have sent with ``full_model_bytes``."""
    wire = _has_wire(runs)
    head = ["method", "seed", "round", "accuracy", "clients", "soft labels", "soft-label acc.",
            "uplink"]
    head += ["uplink on wire", "overhead", "downlink on wire"] if wire else []
    head += ["FP-FL would send"] if full_model_bytes is not None else []
    head += ["s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run in runs:
        for x in run["rounds"]:
            clients = len(x.get("clients", ()))
            cells = [run["method"], str(run["seed"]), str(x["round"]),
                     _fraction(x.get("accuracy")), str(clients),
                     str(x.get("soft_labels_added", 0)), _fraction(x.get("soft_label_accuracy")),
                     human_bytes(x["uplink_bytes"])]
            if wire:
                up, down = x.get("wire_uplink_bytes", 0), x.get("wire_downlink_bytes", 0)
                cells += [human_bytes(up), f"{up / max(x['uplink_bytes'], 1) - 1:+.2%}",
                          human_bytes(down)]
            if full_model_bytes is not None:
                cells.append(human_bytes(clients * full_model_bytes))
            cells.append(f"{x['seconds']:.1f}")
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_report(out_dir: Path, runs: Sequence[Run], title: str, intro: Sequence[str] = (),
                  full_model_bytes: int | None = None) -> Path:
    """Write ``report.md`` and ``report.png`` for ``runs`` into ``out_dir``: ``title``, the
    ``intro`` paragraphs, the per-method summary, the traffic comparison (LP-FL against FP-FL
    where both ran; against ``full_model_bytes`` per accepted update where given), the figure and
    the per-round detail. Returns the path of ``report.md``."""
    plot(runs, out_dir / FIGURE, full_model_bytes)
    lines = [f"# {title}", ""]
    for paragraph in intro:
        lines += [paragraph, ""]
    lines += [summary_table(runs), ""]
    ratio = traffic_ratio(runs)
    if ratio is not None:
        lines += [f"FP-FL clients send **{ratio:,.0f}×** the bytes LP-FL clients send per round.",
                  ""]
    rows = [x for r in runs for x in r["rounds"]]
    sent = sum(_sent(x) for x in rows)
    if full_model_bytes is not None and sent:
        fp = sum(len(x.get("clients", ())) for x in rows) * full_model_bytes
        lines += [f"Clients sent {human_bytes(sent)} in all; FP-FL clients would have sent "
                  f"{human_bytes(fp)}: **{fp / sent:,.0f}×** more.", ""]
    lines += [f"![accuracy and uplink per round]({FIGURE})", "", "Per-round detail:", "",
              *detail_table(runs, full_model_bytes)]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_report(out_dir: Path, title: str = "lpfl simulation") -> Path:
    """Write the report of the runs in ``out_dir/results.json`` (:func:`render_report`)."""
    results = json.loads((out_dir / "results.json").read_text(encoding="utf-8"))
    return render_report(out_dir, results["runs"], title)
