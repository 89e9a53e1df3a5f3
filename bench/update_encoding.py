"""Update-encoding benchmark: does an fp16 or int8 update cost LP-FL accuracy?

Usage::

    python bench/update_encoding.py --config configs/field_int8.toml \
        --encodings fp32,fp16,int8 --out bench/results/encoding

Runs LP-FL in one process (:func:`lpfl.simulate.federate`) once per update encoding, with the
same seeds, data and settings: only ``server.round.update_encoding`` changes. The simulation sends
every client update through the encoding and back, as the websocket client and server do, so the
accuracy is what the network would deliver. Per encoding it records the accuracy after every
round and the bytes of one client update (the safetensors payload), beside the FP-FL update in
fp16: every parameter of the base model × 2 bytes, *computed* from the model's parameter shapes
(the same payload code, not a measured upload). Runs are appended to ``results.json`` as they
finish (a rerun skips what is there); ``report.md`` is rewritten from it.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lpfl.errors import LpflError
from lpfl.harness.run_report import full_model_payload
from lpfl.results import ResultsFile
from lpfl.simulate import base_parameters, federate, federated_data
from lpfl.tensors import ENCODINGS
from lpfl.transport import load_server_config

METHOD = "lp-fl"
FP_FL_ENCODING = "fp16"


def environment() -> dict[str, Any]:
    """What the numbers were measured on (compute seconds depend on it; bytes do not)."""
    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": importlib.metadata.version("transformers"),
            "peft": importlib.metadata.version("peft"), "machine": platform.machine(),
            "threads": torch.get_num_threads()}


def run(config_path: Path, encodings: Sequence[str], out: Path,
        overrides: Sequence[str] = ()) -> ResultsFile:
    """Every (seed, encoding) run not yet in ``out/results.json``."""
    config, server = load_server_config(config_path, overrides)
    torch.set_num_threads(config.run.threads)
    stored = {"run": config.to_dict(), "task_encoding": server.round.task_encoding,
              "fp_fl_parameters": sum(t.numel() for t in base_parameters(config.model).values()),
              "fp_fl_update_bytes": full_model_payload(config, FP_FL_ENCODING),
              "fp_fl_encoding": FP_FL_ENCODING, "environment": environment()}
    results = ResultsFile(out / "results.json", stored)
    for seed in config.run.seeds:
        data = None
        for encoding in encodings:
            if results.has(seed=seed, update_encoding=encoding):
                continue
            data = data or federated_data(config, seed)
            rules = dataclasses.replace(server.round, update_encoding=encoding)
            record, _ = federate(config, METHOD, seed, data, rules=rules)
            results.add(record)
    return results


def table(results: ResultsFile, encodings: Sequence[str]) -> list[dict[str, Any]]:
    """One row per encoding: mean final accuracy over seeds, its change against fp32, the bytes
    of one client update and how many times smaller it is than the FP-FL fp16 update."""
    fp_bytes = results.config["fp_fl_update_bytes"]
    reference = None
    rows = []
    for encoding in encodings:
        runs = [r for r in results.runs if r.get("update_encoding") == encoding]
        if not runs:
            continue
        accuracy = sum(r["final_accuracy"] for r in runs) / len(runs)
        updates = [rd["uplink_bytes"] / len(rd["clients"]) for r in runs for rd in r["rounds"]]
        update_bytes = sum(updates) / len(updates)
        reference = accuracy if encoding == "fp32" else reference
        rows.append({"encoding": encoding, "seeds": [r["seed"] for r in runs],
                     "final_accuracy": accuracy,
                     "delta_vs_fp32": None if reference is None else accuracy - reference,
                     "per_round": [[rd["accuracy"] for rd in r["rounds"]] for r in runs],
                     "update_bytes": update_bytes, "fp_fl_ratio": fp_bytes / update_bytes,
                     "seconds": sum(rd["seconds"] for r in runs for rd in r["rounds"])})
    return rows


def write_report(results: ResultsFile, encodings: Sequence[str], out: Path) -> Path:
    """``out/report.md``: the table, the per-round accuracies, and how it was made."""
    meta, rows = results.config, table(results, encodings)
    run = meta["run"]
    lora = run["lora"]
    lines = ["# LP-FL update encodings: accuracy and bytes", "",
             f"Model `{run['model']['source']}`, LoRA r={lora['r']} (alpha {lora['alpha']}) on "
             f"{', '.join(lora['target_modules'])}; {run['data']['num_clients']} clients, "
             f"{run['federation']['rounds']} rounds × {run['federation']['local_steps']} local "
             f"steps, {run['data']['shots_per_class']} labeled examples per class in all, "
             f"tested on {run['data']['test_limit'] or run['data']['test_size']} MR sentences. "
             f"Global state sent as {meta['task_encoding']}; only the update encoding changes.",
             "", f"FP-FL update ({meta['fp_fl_encoding']}): {meta['fp_fl_parameters']:,} "
             f"parameters → {meta['fp_fl_update_bytes']:,} bytes, **computed** from the "
             "parameter shapes, not measured.", "",
             "| update encoding | final accuracy | vs fp32 (points) | bytes per update | "
             "FP-FL fp16 / LP-FL | accuracy per round | seconds (all rounds) |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        delta = "-" if row["delta_vs_fp32"] is None else f"{row['delta_vs_fp32'] * 100:+.1f}"
        per_round = "; ".join(" ".join(f"{a:.3f}" for a in accs) for accs in row["per_round"])
        lines.append(f"| {row['encoding']} | {row['final_accuracy']:.3f} | {delta} | "
                     f"{row['update_bytes']:,.0f} | {row['fp_fl_ratio']:,.0f}× | {per_round} | "
                     f"{row['seconds']:,.0f} |")
    lines += ["", "Bytes are the safetensors payload of one client update (wire framing adds "
              "about 0.1 %). Seconds are wall-clock compute on a shared CPU "
              f"({meta['environment']['threads']} thread), inflated by other jobs on the host.",
              ""]
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=Path("configs/field_int8.toml"),
                        help="TOML run file (default configs/field_int8.toml)")
    parser.add_argument("--encodings", default=",".join(ENCODINGS),
                        help="comma-separated update encodings (default fp32,fp16,int8)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE", help="override one config value")
    parser.add_argument("--out", type=Path, default=Path("bench/results/encoding"))
    args = parser.parse_args(argv)
    encodings = [e for e in args.encodings.split(",") if e]
    unknown = [e for e in encodings if e not in ENCODINGS]
    if unknown:
        print(f"error: --encodings: unknown {', '.join(unknown)}", file=sys.stderr)
        return 2
    try:
        results = run(args.config, encodings, args.out, args.overrides)
    except LpflError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {results.path} and {write_report(results, encodings, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
