"""``lpfl compare``: config differences and outcomes of two results, either kind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lpfl import cli
from lpfl.compare import load_results
from lpfl.errors import LpflError
from lpfl.results import JsonResultsWriter, ResultsFile
from tests.test_records import RECORD


def _simulation(folder: Path, lr: float, accuracy: float) -> Path:
    results = ResultsFile(folder / "results.json", {"federation": {"lr": lr, "rounds": 1}})
    results.add({"method": "lp-fl", "seed": 0, "final_accuracy": accuracy,
                 "rounds": [{"round": 1, "uplink_bytes": 1000}]})
    return folder


def test_two_simulations_show_their_config_difference_and_accuracy_change(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _simulation(tmp_path / "a", 1e-3, 0.80)
    b = _simulation(tmp_path / "b", 2e-3, 0.83)
    assert cli.main(["compare", str(a), str(b / "results.json")]) == 0
    out = capsys.readouterr().out
    assert "federation.lr: 0.001 then, 0.002 now" in out
    assert "| lp-fl | 0 | 0.8000 | 0.8300 | +0.0300 | 1 | 1 | 1,000 | 1,000 |" in out


def test_an_aggregator_run_compares_with_a_simulation(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    config = {"federation": {"lr": 1e-3, "rounds": 1},
              "run": {"methods": ["lp-fl"], "seeds": [0]}}
    JsonResultsWriter(tmp_path / "server" / "results.json", {"config": config}).write([RECORD])
    a = _simulation(tmp_path / "a", 1e-3, 0.80)
    assert cli.main(["compare", str(a), str(tmp_path / "server")]) == 0
    out = capsys.readouterr().out
    assert "run: None then" in out  # the simulation's config has no run table
    row = next(line for line in out.splitlines() if line.startswith("| lp-fl | 0 |"))
    accuracy = RECORD.eval_metrics.get("accuracy")
    assert row.split(" | ")[3] == ("–" if accuracy is None else f"{accuracy:.4f}")


def test_what_is_not_lpfl_results_is_refused(tmp_path: Path) -> None:
    (tmp_path / "other.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(LpflError, match="not an lpfl results file"):
        load_results(tmp_path / "other.json")
    with pytest.raises(LpflError, match="cannot read"):
        load_results(tmp_path / "missing")
    assert cli.main(["compare", str(tmp_path / "other.json"), str(tmp_path)]) == 2
