"""``report.md`` and PNG plots of a field run, from the ``field.json`` of each profile/method.

The plots (all in ``OUT/``): ``bytes_per_round.png`` (uplink bytes on the wire per round),
``round_time.png`` (a round split into compute / upload / download / waiting, stacked, mean per
client), ``accuracy_vs_uplink.png`` (accuracy against cumulative uplink bytes),
``accuracy_vs_time.png`` (accuracy against cumulative wall-clock time, with the target accuracy)
and ``efficiency.png`` (the physical limit, payload bytes over the link's uplink rate, beside the
measured upload time). Extrapolated rounds are drawn hollow and dashed, hatched in the bars,
and marked in every table; their accuracy is never drawn, because it was not measured. Fleet
runs add the sections and plots of :mod:`~lpfl.harness.field.fleet_report`; the summary says
where the target accuracy came from (:mod:`~lpfl.harness.field.target`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from lpfl.harness.field.figures import accuracy_plot, colours, label, save
from lpfl.harness.field.fleet_report import fleet_sections
from lpfl.harness.field.run import EXTRAPOLATED
from lpfl.harness.field.target import Target
from lpfl.records import ClientStatus
from lpfl.report import human_bytes

log = logging.getLogger(__name__)

PHASES = ("compute_seconds", "upload_seconds", "download_seconds", "eval_seconds",
          "wait_seconds")


def load_runs(out: Path, paths: Sequence[Path] | None = None) -> list[dict[str, Any]]:
    """The given ``field.json`` files (default: every ``OUT/<profile>/<method>/field.json``),
    sorted by profile and method."""
    files = sorted(out.glob("*/*/field.json")) if paths is None else paths
    runs = [json.loads(p.read_text(encoding="utf-8")) for p in files]
    return sorted(runs, key=lambda r: (r["profile"]["name"], r["method"]))


def _measured(run: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in run["rounds"] if not r["extrapolated"]]


def mean_uplink_per_round(run: dict[str, Any]) -> tuple[float, bool]:
    """Mean wire uplink bytes per round: measured rounds if any (False), else extrapolated."""
    rows = _measured(run) or run["rounds"]
    if not rows:
        return 0.0, True
    return sum(r["wire_uplink_bytes"] for r in rows) / len(rows), not _measured(run)


def training_seconds(row: dict[str, Any]) -> float:
    """A round's wall time without the server's evaluation of it: evaluating on the test set
    measures the experiment and is not a step of federated training. Rows say so themselves
    (``training_seconds``: without an inline evaluation, a background one never was in it);
    runs recorded before then evaluated inline and count ``eval_seconds`` in."""
    if "training_seconds" in row:
        return float(row["training_seconds"])
    return float(row["seconds"]) - float(row.get("eval_seconds", 0.0))


def time_to_accuracy(run: dict[str, Any], target: float) -> float | None:
    """Cumulative training seconds until a measured round first reaches ``target`` (None:
    never)."""
    elapsed = 0.0
    for row in run["rounds"]:
        elapsed += training_seconds(row)
        if row["accuracy"] is not None and row["accuracy"] >= target:
            return elapsed
    return None


def phase_means(run: dict[str, Any]) -> dict[str, float]:
    """Mean seconds per client and round in each phase (updated and extrapolated clients)."""
    cs = [c for r in run["rounds"] for c in r["clients"]
          if c["status"] in (ClientStatus.UPDATED, EXTRAPOLATED)]
    return {p: sum(c.get(p, 0.0) for c in cs) / max(len(cs), 1) for p in PHASES}


def upload_efficiency(run: dict[str, Any]) -> tuple[float, float]:
    """(physical-limit seconds, measured seconds) summed over timed client uploads."""
    rate = run["profile"]["uplink_mbit"] * 1e6
    limit = measured = 0.0
    for row in _measured(run):
        for c in row["clients"]:
            if c.get("upload_timed"):
                limit += c["payload_uplink_bytes"] * 8 / rate
                measured += c["upload_seconds"]
    return limit, measured


def default_target(runs: Sequence[dict[str, Any]]) -> float:
    """The best accuracy that every method measured on a profile reached (the lowest of their
    best accuracies), so each has a time to it."""
    bests = [max((r["accuracy"] for r in _measured(run) if r["accuracy"] is not None),
                 default=0.0) for run in runs if _measured(run)]
    return min(bests, default=0.0)


def _reached(run: dict[str, Any], seconds: float | None, verb: str) -> str:
    if seconds is not None:
        return f"{verb} {seconds:,.1f} s"
    measured = len(_measured(run))
    return f"did not reach it in {measured} measured round{'s' * (measured != 1)}"


def total_seconds(run: dict[str, Any]) -> tuple[float, bool]:
    """Training seconds of all requested rounds, and whether any of them is extrapolated."""
    return (sum(training_seconds(r) for r in run["rounds"]),
            any(r["extrapolated"] for r in run["rounds"]))


def summary_lines(runs: Sequence[dict[str, Any]], target: Target | None) -> list[str]:
    """The sentences at the top: where the target came from; per profile, LP-FL against FP-FL;
    per fleet run, its time to the target."""
    lines = [f"- Target accuracy {target.accuracy:.1%}: {target.source}." if target else
             "- Target accuracy: per profile, the lowest of the methods' best accuracies (each "
             "method reaches it); per fleet run, its own best."]
    for run in (r for r in runs if "fleet" in r):
        goal = target.accuracy if target else default_target([run])
        seconds, _ = total_seconds(run)
        lines.append(f"- **{label(run)}**: target {goal:.1%}: "
                     f"{_reached(run, time_to_accuracy(run, goal), 'reached it in')}; "
                     f"{len(run['rounds'])} rounds took {seconds:,.1f} s.")
    for profile in dict.fromkeys(r["profile"]["name"] for r in runs):
        by_method = {r["method"]: r for r in runs if r["profile"]["name"] == profile}
        lp, fp = by_method.get("lp-fl"), by_method.get("fp-fl")
        if lp is None or fp is None:
            continue
        goal = target.accuracy if target else default_target([lp, fp])
        t_lp, t_fp = time_to_accuracy(lp, goal), time_to_accuracy(fp, goal)
        a, a_x = mean_uplink_per_round(lp)
        b, b_x = mean_uplink_per_round(fp)
        fp_note = " (extrapolated)" if b_x else ""
        ratio = f"{b / a:,.0f}×" if a else "n/a"
        lp_note = " (extrapolated)" if a_x else ""
        (lp_s, lp_x), (fp_s, fp_x) = total_seconds(lp), total_seconds(fp)
        lp_reached, fp_reached = _reached(lp, t_lp, "reached it in"), _reached(fp, t_fp, "needed")
        lines.append(
            f"- **{profile}**: target accuracy {goal:.1%}: LP-FL {lp_reached}, FP-FL {fp_reached}"
            f"; uplink per round {human_bytes(int(a))}{lp_note} vs "
            f"{human_bytes(int(b))}{fp_note} ({ratio}); {len(lp['rounds'])} rounds took "
            f"{lp_s:,.1f} s{' (partly extrapolated)' if lp_x else ''} with LP-FL and "
            f"{fp_s:,.1f} s{' (partly extrapolated)' if fp_x else ''} with FP-FL.")
    return lines


def write_field_report(out: Path, target: Target | None = None,
                       paths: Sequence[Path] | None = None) -> Path:
    """Write ``OUT/report.md`` and the plots of the runs in ``paths`` (default: every
    ``field.json`` under ``out``); returns the report's path."""
    runs = load_runs(out, paths)
    if not runs:
        raise FileNotFoundError(f"no */*/field.json under {out}")
    first = runs[0]
    lines = ["# lpfl field run: real clients on shaped links", "",
             f"Model `{first['model']}`, {first['clients']} client processes, each in its own "
             f"network namespace; updates as {first['update_encoding']}, global state as "
             f"{first['task_encoding']}. Rates shaped with `tc tbf`, RTT added by a userspace "
             "delay proxy. Rows marked *extrapolated* were not run: they repeat the mean of the "
             "measured rounds (or the link's physical limit when none was measured) and have "
             "no accuracy.", "", "## Summary", ""]
    lines += summary_lines(runs, target)
    lines += ["", "## Links", "", "| profile | uplink | downlink | RTT | measured up | "
              "measured down | source |", "|---|---|---|---|---|---|---|"]
    for profile in dict.fromkeys(r["profile"]["name"] for r in runs):
        run = next(r for r in runs if r["profile"]["name"] == profile)
        p, checks = run["profile"], run["shaping_check"]

        def measured(direction: str, checks: list[dict[str, Any]] = checks) -> str:
            got = [c["mbit"] / c["expected_mbit"] - 1 for c in checks
                   if c["direction"] == direction]
            return ", ".join(f"{g:+.1%}" for g in got) or "-"

        lines.append(f"| {profile} | {p['uplink_mbit']} Mbit/s | {p['downlink_mbit']} Mbit/s | "
                     f"{p['rtt_ms']} ms | {measured('up')} | {measured('down')} | "
                     f"{p['source']} |")
    lines += ["", "## Rounds", "", "| profile | method | round | accuracy | uplink (wire) | "
              "downlink (wire) | round s | compute s | upload s | download s | eval s | "
              "wait s | |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        for row in run["rounds"]:
            cs = [c for c in row["clients"]
                  if c["status"] in (ClientStatus.UPDATED, EXTRAPOLATED)]

            def mean(key: str, cs: list[dict[str, Any]] = cs) -> str:
                return f"{sum(c.get(key, 0.0) for c in cs) / max(len(cs), 1):.2f}"

            acc = "-" if row["accuracy"] is None else f"{row['accuracy']:.3f}"
            mark = f"*extrapolated* ({row.get('basis', '')})" if row["extrapolated"] else ""
            lines.append(
                f"| {run['profile']['name']} | {run['method']} | {row['round']} | {acc} | "
                f"{human_bytes(int(row['wire_uplink_bytes']))} | "
                f"{human_bytes(int(row['wire_downlink_bytes']))} | {row['seconds']:.1f} | "
                f"{mean('compute_seconds')} | {mean('upload_seconds')} | "
                f"{mean('download_seconds')} | {row.get('eval_seconds', 0.0):.2f} | "
                f"{mean('wait_seconds')} | {mark} |")
    lines += ["", "Seconds are means per sampled client. Upload and download are timed by the "
              "delay proxy (first to last byte, plus the one-way delay); compute is the client's "
              "soft-labelling plus training; eval is the server's evaluation of the new global "
              "state on the test set, which the summary's times leave out for every method (it "
              "measures the experiment, it does not train; a run with background evaluation "
              "evaluates beside the next rounds, outside round s); waiting is the rest of the "
              "round's wall time.", "",
              "## Upload time against the physical limit", "",
              "| profile | method | payload / rate | measured upload | efficiency |",
              "|---|---|---|---|---|"]
    for run in runs:
        limit, measured_s = upload_efficiency(run)
        eff = f"{limit / measured_s:.1%}" if measured_s else "-"
        lines.append(f"| {run['profile']['name']} | {run['method']} | {limit:.2f} s | "
                     f"{measured_s:.2f} s | {eff} |")
    lines += ["", "Summed over every timed client upload of the measured rounds. Small payloads "
              "cannot reach the limit: the one-way delay and framing dominate them.", ""]
    notes = [f"- {r['profile']['name']} / {r['method']}: {r['budget_note']}" for r in runs
             if r["rounds_measured"] < r["rounds_requested"]]
    if notes:
        lines += ["## Time budget", "", *notes, ""]
    lines += fleet_sections([r for r in runs if "fleet" in r], out, colours(runs))
    for name, title in (("bytes_per_round", "uplink bytes per round"),
                        ("round_time", "round time by phase"),
                        ("accuracy_vs_uplink", "accuracy against cumulative uplink"),
                        ("accuracy_vs_time", "accuracy against wall-clock time"),
                        ("efficiency", "upload time against the physical limit")):
        lines += [f"![{title}]({name}.png)", ""]
    _plots(runs, out, target)
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    log.info("wrote %s", path)
    return path


def _plots(runs: Sequence[dict[str, Any]], out: Path, target: Target | None) -> None:
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    style = colours(runs)

    profiles = list(dict.fromkeys(r["profile"]["name"] for r in runs))
    methods = list(dict.fromkeys(r["method"] for r in runs))
    method_color = {m: colors[i % len(colors)] for i, m in enumerate(methods)}
    fig, axes = plt.subplots(1, len(profiles), figsize=(4 * len(profiles), 3.6), sharey=True,
                             squeeze=False)
    for ax, profile in zip(axes[0], profiles, strict=True):
        for run in (r for r in runs if r["profile"]["name"] == profile):
            meas = [r for r in run["rounds"] if not r["extrapolated"]]
            extra = [r for r in run["rounds"] if r["extrapolated"]]
            color = method_color[run["method"]]
            ax.plot([r["round"] for r in meas], [r["wire_uplink_bytes"] for r in meas], "o-",
                    color=color, label=run["method"])
            if extra:
                joined = meas[-1:] + extra
                ax.plot([r["round"] for r in joined], [r["wire_uplink_bytes"] for r in joined],
                        "o--", mfc="none", color=color, label=f"{run['method']} (extrapolated)")
        ax.set(yscale="log", xlabel="round", title=profile)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("uplink bytes per round (wire)")
    save(fig, out / "bytes_per_round.png")

    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(runs)), 4))
    bottoms = [0.0] * len(runs)
    for phase in PHASES:
        heights = [phase_means(run)[phase] for run in runs]
        bars = ax.bar(range(len(runs)), heights, bottom=bottoms,
                      label=phase.removesuffix("_seconds"))
        for bar, run in zip(bars, runs, strict=True):
            if run["rounds_measured"] < run["rounds_requested"]:
                bar.set_hatch("//")
        bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
    ax.set_xticks(range(len(runs)), [label(r) + ("\n(incl. extrapolated)" if
                                                   r["rounds_measured"] < r["rounds_requested"]
                                                   else "") for r in runs],
                  fontsize=7, rotation=20)
    ax.set(ylabel="seconds per client and round")
    ax.legend(fontsize=7)
    save(fig, out / "round_time.png")

    goal = target.accuracy if target else default_target(runs)
    accuracy_plot(runs, style, lambda row: float(row["wire_uplink_bytes"]),
                   "cumulative uplink bytes (wire)", None,
                   out / "accuracy_vs_uplink.png")
    accuracy_plot(runs, style, training_seconds,
                   "cumulative wall-clock seconds (without server evaluation)", goal,
                   out / "accuracy_vs_time.png")

    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(runs)), 4))
    pairs = [upload_efficiency(run) for run in runs]
    xs = range(len(runs))
    ax.bar([x - 0.2 for x in xs], [p[0] for p in pairs], 0.4, label="payload / uplink rate")
    ax.bar([x + 0.2 for x in xs], [p[1] for p in pairs], 0.4, label="measured upload")
    for x, (limit, measured) in zip(xs, pairs, strict=True):
        if measured:
            ax.annotate(f"{limit / measured:.0%}", (x, max(limit, measured)), ha="center",
                        va="bottom", fontsize=7)
    ax.set_xticks(list(xs), [label(r) for r in runs], fontsize=7, rotation=20)
    ax.set(yscale="log", ylabel="upload seconds (sum over measured rounds)")
    ax.legend(fontsize=7)
    save(fig, out / "efficiency.png")
