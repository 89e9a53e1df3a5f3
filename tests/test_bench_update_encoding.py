"""The update-encoding benchmark (``bench/update_encoding.py``) and what it rests on: the
simulation sends updates through the configured encoding exactly as the websocket run does."""

from __future__ import annotations

import json
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from bench import update_encoding
from lpfl.config import config_from_dict
from lpfl.harness.launch import launch
from lpfl.results import ResultsFile
from lpfl.server.checkpoint import load_checkpoint
from lpfl.simulate import FP32_RULES, federate, federated_data
from tests.test_launch import RUN

INT8 = replace(FP32_RULES, update_encoding="int8")


def test_an_int8_simulation_equals_the_int8_websocket_run(tmp_path: Path) -> None:
    run_file = tmp_path / "run.toml"
    run_file.write_text(RUN + '[server.round]\nupdate-encoding = "int8"\n')
    launch(run_file, clients=2, out=tmp_path / "out", timeout_s=240)
    served = load_checkpoint(tmp_path / "out" / "checkpoint.safetensors").global_state

    config = config_from_dict(tomllib.loads(RUN))
    data = federated_data(config, 0)
    record, simulated = federate(config, "lp-fl", 0, data, lambda _: None, INT8)
    _, unquantized = federate(config, "lp-fl", 0, data, lambda _: None)
    for name, tensor in simulated.items():
        torch.testing.assert_close(served[name], tensor, atol=1e-5, rtol=1e-4)
    assert any(not torch.allclose(simulated[n], unquantized[n], atol=1e-6) for n in simulated)
    assert record["update_encoding"] == "int8"


def test_the_benchmark_writes_one_row_per_encoding(tmp_path: Path) -> None:
    run_file = tmp_path / "run.toml"
    run_file.write_text(RUN)
    out = tmp_path / "bench"
    assert update_encoding.main(["--config", str(run_file), "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    runs = {r["update_encoding"]: r for r in results["runs"]}
    assert set(runs) == {"fp32", "fp16", "int8"}
    values = runs["fp32"]["trainable_parameters"]
    sizes = {e: {rd["uplink_bytes"] / len(rd["clients"]) for rd in r["rounds"]}
             for e, r in runs.items()}
    assert all(len(per_round) == 1 for per_round in sizes.values())  # the same every round
    fp32, fp16, int8 = (min(sizes[e]) for e in ("fp32", "fp16", "int8"))
    # 4, 2 and 1 bytes a value plus a header: fp16 saves 2 bytes a value (up to the header's
    # padding), int8 one more, but its header also carries a scale per tensor.
    assert fp32 - fp16 == pytest.approx(2 * values, rel=0.01)
    assert fp32 - 4 * values < int8 - values < fp16 - values
    # Only the update encoding changes: every run downloads the same fp32 global state.
    for run in runs.values():
        for rd in run["rounds"]:
            assert rd["downlink_bytes"] == fp32 * len(rd["clients"])
    config = results["config"]
    assert 2 * config["fp_fl_parameters"] < config["fp_fl_update_bytes"] < (
        2.01 * config["fp_fl_parameters"])

    rows = _report_rows((out / "report.md").read_text())
    assert list(rows) == ["fp32", "fp16", "int8"]
    for encoding, row in rows.items():
        size = min(sizes[encoding])
        assert float(row["bytes per update"].replace(",", "")) == pytest.approx(size, abs=0.5)
        ratio = float(row["FP-FL fp16 / LP-FL"].removesuffix("×").replace(",", ""))
        assert ratio == pytest.approx(config["fp_fl_update_bytes"] / size, abs=0.5)
        accuracy = runs[encoding]["final_accuracy"]
        assert float(row["final accuracy"]) == pytest.approx(accuracy, abs=5e-4)
        assert float(row["vs fp32 (points)"]) == pytest.approx(
            100 * (accuracy - runs["fp32"]["final_accuracy"]), abs=0.05)

    before = (out / "results.json").read_text()
    assert update_encoding.main(["--config", str(run_file), "--out", str(out)]) == 0  # resumes
    assert (out / "results.json").read_text() == before  # nothing run again


def _report_rows(report: str) -> dict[str, dict[str, str]]:
    """The report's table: update encoding -> column header -> cell."""
    lines = [[c.strip() for c in line.strip("|").split("|")]
             for line in report.splitlines() if line.startswith("| ")]
    header, *body = lines
    return {row[0]: dict(zip(header, row, strict=True)) for row in body}


def test_the_table_compares_each_encoding_with_fp32(tmp_path: Path) -> None:
    """Mean accuracy over seeds, its change against fp32's mean, and bytes per client update,
    from runs whose numbers all differ."""
    def run(encoding: str, seed: int, accuracy: float, update_bytes: int) -> dict[str, object]:
        rounds = [{"accuracy": accuracy, "uplink_bytes": 3 * update_bytes,
                   "clients": ["a", "b", "c"], "seconds": 1.0}]
        return {"update_encoding": encoding, "seed": seed, "final_accuracy": accuracy,
                "rounds": rounds}

    results = ResultsFile(tmp_path / "results.json", {"fp_fl_update_bytes": 1_000_000})
    results.runs = [run("fp32", 0, 0.80, 10_000), run("fp32", 1, 0.70, 10_000),
                    run("int8", 0, 0.60, 2_500), run("int8", 1, 0.62, 2_500),
                    run("fp16", 0, 0.74, 5_000)]
    rows = {r["encoding"]: r for r in update_encoding.table(results, ["fp32", "fp16", "int8"])}
    assert list(rows) == ["fp32", "fp16", "int8"]
    assert rows["fp32"]["final_accuracy"] == pytest.approx(0.75)
    assert rows["fp16"]["delta_vs_fp32"] == pytest.approx(0.74 - 0.75)
    assert rows["int8"]["delta_vs_fp32"] == pytest.approx(0.61 - 0.75)
    assert rows["int8"]["seeds"] == [0, 1]
    assert [rows[e]["update_bytes"] for e in rows] == [10_000, 5_000, 2_500]
    assert [rows[e]["fp_fl_ratio"] for e in rows] == [100, 200, 400]
