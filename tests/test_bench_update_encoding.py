"""The update-encoding benchmark (``bench/update_encoding.py``) and what it rests on: the
simulation sends updates through the configured encoding exactly as the websocket run does."""

from __future__ import annotations

import json
import tomllib
from dataclasses import replace
from pathlib import Path

import torch

from bench import update_encoding
from lpfl.config import config_from_dict
from lpfl.server.checkpoint import load_checkpoint
from lpfl.server.launch import launch
from lpfl.simulate import FP32_RULES, federate, federated_data

from .test_launch import RUN

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
    rows = {r["update_encoding"]: r for r in results["runs"]}
    assert set(rows) == {"fp32", "fp16", "int8"}
    sizes = [rows[e]["rounds"][0]["uplink_bytes"] for e in ("fp32", "fp16", "int8")]
    assert sizes[0] > sizes[1] > sizes[2] > 0
    report = (out / "report.md").read_text()
    assert "**computed**" in report and "| int8 |" in report
    assert update_encoding.main(["--config", str(run_file), "--out", str(out)]) == 0  # resumes
    assert len(json.loads((out / "results.json").read_text())["runs"]) == 3
