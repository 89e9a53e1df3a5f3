"""``report.md`` and ``report.png`` for a websocket run, from the server's ``results.json``.

Per round: test accuracy, bytes clients sent and received as measured on their connections
(``wire_*``) next to the tensor payloads, the wire overhead, and what FP-FL clients would have
sent in the same round (the whole model in the run's update encoding, per sampled client).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from lpfl.config import RunConfig
from lpfl.report import human_bytes
from lpfl.simulate import base_parameters
from lpfl.tensors import payload_nbytes


def full_model_payload(config: RunConfig, encoding: str) -> int:
    """Bytes of one FP-FL update: every parameter of the base model (tied weights once)."""
    return payload_nbytes(base_parameters(config.model), encoding)


def updated_clients(record: dict[str, Any]) -> int:
    """How many clients' updates the server folded into this round."""
    return sum(c["status"] == "updated" for c in record["clients"])


def write_run_report(out: Path, config: RunConfig, encoding: str) -> Path:
    """Write the report of the run whose server wrote ``out/results.json``."""
    rounds: list[dict[str, Any]] = json.loads(
        (out / "results.json").read_text(encoding="utf-8"))["rounds"]
    fp_update = full_model_payload(config, encoding)
    lines = ["# lpfl federated run (websockets)", "",
             f"Model `{config.model.source}`, {config.data.num_clients} clients, "
             f"{len(rounds)} rounds, updates encoded as {encoding}.", "",
             "| round | accuracy | clients | uplink on wire | uplink payload | overhead | "
             "downlink on wire | FP-FL would send | s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rounds:
        updated = updated_clients(r)
        overhead = r["wire_uplink_bytes"] / max(r["payload_uplink_bytes"], 1) - 1
        lines.append(
            f"| {r['round']} | {r['eval_metrics'].get('accuracy', float('nan')):.3f} | "
            f"{updated} | {human_bytes(r['wire_uplink_bytes'])} | "
            f"{human_bytes(r['payload_uplink_bytes'])} | {overhead:+.2%} | "
            f"{human_bytes(r['wire_downlink_bytes'])} | {human_bytes(updated * fp_update)} | "
            f"{r['seconds']:.1f} |")
    up = sum(r["wire_uplink_bytes"] for r in rounds)
    fp = sum(updated_clients(r) for r in rounds) * fp_update
    if up:
        lines += ["", f"Clients sent {human_bytes(up)} in all; FP-FL clients would have sent "
                  f"{human_bytes(fp)}: **{fp / up:,.0f}×** more.", ""]
    lines += ["![accuracy and uplink per round](report.png)", ""]
    _plot(rounds, fp_update, out / "report.png")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _plot(rounds: list[dict[str, Any]], fp_update: int, path: Path) -> None:
    xs = [r["round"] for r in rounds]
    fig, (acc_ax, bytes_ax) = plt.subplots(1, 2, figsize=(9, 3.5))
    acc_ax.plot(xs, [r["eval_metrics"].get("accuracy", float("nan")) for r in rounds],
                marker="o")
    acc_ax.set_xlabel("round")
    acc_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    acc_ax.set_ylabel("test accuracy")
    acc_ax.grid(alpha=0.3)
    bytes_ax.plot(xs, [r["wire_uplink_bytes"] for r in rounds], marker="o",
                  label="LP-FL uplink (wire)")
    bytes_ax.plot(xs, [fp_update * updated_clients(r) for r in rounds], marker="s",
                  label="FP-FL uplink (payload)")
    bytes_ax.set_yscale("log")
    bytes_ax.set_xlabel("round")
    bytes_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    bytes_ax.set_ylabel("bytes per round")
    bytes_ax.legend(fontsize=8)
    bytes_ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
