"""The fleet part of a field report: what a deployer of a mixed fleet asks.

For every fleet run (a ``field.json`` with a ``fleet``): the mean compute, upload, download and
waiting seconds per link profile and per device, with the network's share of a client's round;
with over-selection (``close_after``), per round the late clients, how long the slowest of them
would have held the round, the time saved and the uplink bytes wasted on refused updates. Two
plots: ``round_time_cdf.png`` (the distribution of client round times, one line per link
profile, one panel per run) and ``accuracy_vs_bytes.png`` (accuracy against the cumulative
bytes on the wire, both directions).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from lpfl.harness.field.figures import accuracy_plot, label, save
from lpfl.records import ClientStatus
from lpfl.report import human_bytes

PHASES = ("compute_seconds", "upload_seconds", "download_seconds", "wait_seconds")


def client_round_seconds(client: Mapping[str, Any]) -> float | None:
    """A client's own part of a round: download, compute and upload of an accepted update, or
    for a late client the time its refused update would have held the round (None: unknown)."""
    if ClientStatus(client["status"]).accepted:
        return float(client["download_seconds"] + client["compute_seconds"]
                     + client["upload_seconds"])
    if client["status"] == ClientStatus.LATE:
        return client.get("needed_seconds")
    return None


def _clients(run: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [c for r in run["rounds"] if not r["extrapolated"] for c in r["clients"]
            if "emulation" in c]


def _device(client: Mapping[str, Any]) -> str:
    return Path(client["emulation"]["device"]).stem  # a profile file by its name


def _link(client: Mapping[str, Any]) -> str:
    return str(client["emulation"]["link"])


def network_share(clients: Sequence[Mapping[str, Any]]) -> float | None:
    """Upload and download seconds over the clients' download + compute + upload seconds."""
    network = sum(c["upload_seconds"] + c["download_seconds"] for c in clients)
    total = network + sum(c["compute_seconds"] for c in clients)
    return network / total if total else None


def group_table(run: Mapping[str, Any], key: Callable[[Mapping[str, Any]], str],
                heading: str) -> list[str]:
    """Mean seconds per phase of the accepted updates, per group of clients (``key``)."""
    lines = [f"| {heading} | clients | updates | late | compute s | upload s | download s | "
             "wait s | network share |", "|---|---|---|---|---|---|---|---|---|"]
    clients = _clients(run)
    for name in sorted({key(c) for c in clients}):
        group = [c for c in clients if key(c) == name]
        accepted = [c for c in group if ClientStatus(c["status"]).accepted]
        means = [f"{sum(c[p] for c in accepted) / len(accepted):.2f}" if accepted else "-"
                 for p in PHASES]
        share = network_share(accepted)
        lines.append(f"| {name} | {len({c['client_id'] for c in group})} | {len(accepted)} | "
                     f"{sum(c['status'] == ClientStatus.LATE for c in group)} | "
                     f"{' | '.join(means)} | {'-' if share is None else f'{share:.0%}'} |")
    return lines


def overselection_table(run: Mapping[str, Any]) -> list[str]:
    """Per round with late clients: what the slowest would have cost, what it cost."""
    lines = ["| round | late | round s | slowest late needed s | time saved s | wasted uplink |",
             "|---|---|---|---|---|---|"]
    rows = [r for r in run["rounds"] if r.get("late_clients")]
    for row in rows:
        needed = [c.get("needed_seconds") for c in row["clients"]
                  if c["status"] == ClientStatus.LATE]
        slowest = "not seen" if None in needed else f"{max(n for n in needed if n):.1f}"
        saved = row["time_saved_seconds"]
        lines.append(f"| {row['round']} | {row['late_clients']} | "
                     f"{row['training_seconds']:.1f} | {slowest} | "
                     f"{'-' if saved is None else f'{saved:.1f}'} | "
                     f"{human_bytes(int(row['wasted_uplink_bytes']))} |")
    saved_known = [r["time_saved_seconds"] for r in rows if r["time_saved_seconds"] is not None]
    wasted = sum(r["wasted_uplink_bytes"] for r in rows)
    uplink = sum(r["wire_uplink_bytes"] for r in run["rounds"] if not r["extrapolated"])
    lines += ["", f"{sum(r['late_clients'] for r in rows)} late updates in {len(rows)} of "
              f"{len(run['rounds'])} rounds; {human_bytes(int(wasted))} of refused uploads "
              f"({wasted / uplink if uplink else 0:.1%} of the uplink); "
              f"{sum(saved_known):,.1f} s saved over the {len(saved_known)} rounds whose late "
              "uploads all arrived (a late client still training when the run ended was never "
              "seen)."]
    return lines


def fleet_sections(runs: Sequence[dict[str, Any]], out: Path,
                   style: Mapping[str, str]) -> list[str]:
    """The report's fleet section for ``runs`` (fleet runs only), and its two plots; nothing
    without a fleet run."""
    if not runs:
        return []
    lines = ["## Fleet", "", "Means over the accepted updates of each group of clients; the "
             "network share is upload + download over download + compute + upload. A late "
             "client's round time is the time its refused update would have held the round: its "
             "download, then from when it could start on the task to the last byte of its "
             "upload, as the delay proxy saw it.", ""]
    for run in runs:
        lines += [f"### {label(run)}", "",
                  f"Server evaluation {run.get('evaluation', 'inline')}; close-after "
                  f"{run.get('close_after') or 'off'} of {run.get('clients_per_round', '?')} "
                  "clients per round.", "",
                  *group_table(run, _link, "link"), "", *group_table(run, _device, "device"), ""]
        if run.get("close_after"):
            lines += ["Over-selection:", "", *overselection_table(run), ""]
    _cdf_plot(runs, out / "round_time_cdf.png")
    accuracy_plot(runs, style, lambda row: float(row["wire_uplink_bytes"]
                                                  + row["wire_downlink_bytes"]),
                  "cumulative bytes on the wire (uplink + downlink)", None,
                  out / "accuracy_vs_bytes.png")
    return [*lines, "![client round times by link](round_time_cdf.png)", "",
            "![accuracy against cumulative bytes](accuracy_vs_bytes.png)", ""]


def _cdf_plot(runs: Sequence[dict[str, Any]], path: Path) -> None:
    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 3.6), squeeze=False)
    for ax, run in zip(axes[0], runs, strict=True):
        clients = _clients(run)
        for link in sorted({_link(c) for c in clients}):
            times = sorted(t for c in clients if _link(c) == link
                           if (t := client_round_seconds(c)) is not None)
            if times:
                ax.step(times, [(i + 1) / len(times) for i in range(len(times))], where="post",
                        label=f"{link} ({len(times)})")
        ax.set(xlabel="client round seconds", ylabel="fraction of client rounds",
               title=label(run), ylim=(0, 1.02))
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    save(fig, path)
