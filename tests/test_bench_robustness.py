"""The robustness benchmark (``bench/robustness.py``) at a tiny size: it runs end to end, the
server's defences act on the attackers' updates, and the report says what was lost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bench import robustness
from lpfl.data.toy import write_toy_csv
from lpfl.simulate import federated_data
from lpfl.strategy import ClientUpdate


def test_attacks_transform_the_honest_change() -> None:
    global_state = {"w": torch.tensor([1.0, 1.0])}
    honest = ClientUpdate("c", {"w": torch.tensor([2.0, 1.0])}, 3)
    generator = torch.Generator().manual_seed(0)
    scaled = robustness.attacked(honest, global_state, robustness.Attack.SCALED, generator)
    flipped = robustness.attacked(honest, global_state, robustness.Attack.SIGN_FLIP, generator)
    noise = robustness.attacked(honest, global_state, robustness.Attack.RANDOM, generator)
    assert torch.equal(scaled.state["w"], torch.tensor([1.0 + robustness.BOOST, 1.0]))
    assert torch.equal(flipped.state["w"], torch.tensor([1.0 - robustness.BOOST, 1.0]))
    assert float((noise.state["w"] - 1.0).norm()) == robustness.BOOST * 1.0
    assert scaled.num_examples == 3


def test_a_tiny_benchmark_runs_and_reports(tmp_path: Path) -> None:
    config = robustness.bench_config(write_toy_csv(tmp_path / "toy.csv", n=1000), clients=4,
                                     rounds=2)
    data = federated_data(config, seed=0)
    runs = [robustness.run_scenario(config, data, scenario) for scenario in robustness.scenarios(
        ["fedavg-no-clip", "fedavg-defaults", "median"], [robustness.Attack.SIGN_FLIP], [1])]
    assert [r["scenario"] for r in runs] == [
        "fedavg-no-clip/no-attack", "fedavg-defaults/no-attack", "median/no-attack",
        "fedavg-no-clip/1xsign-flip", "fedavg-defaults/1xsign-flip", "median/1xsign-flip"]
    by_name = {r["scenario"]: r for r in runs}
    test_size = config.data.test_size
    for run in runs:
        assert [r["round"] for r in run["rounds"]] == [1, 2]
        assert run["final_accuracy"] == run["rounds"][-1]["accuracy"]
        for record in run["rounds"]:  # a fraction of the test texts, every client accounted for
            assert record["accuracy"] * test_size == pytest.approx(
                round(record["accuracy"] * test_size), abs=1e-3)
            honest = 4 - run["attackers"]
            assert 0 <= record["honest_clipped"] <= honest
            assert 0 <= record["honest_discarded"] <= honest
    attacked = by_name["fedavg-defaults/1xsign-flip"]["rounds"]
    assert set(attacked[0]["attackers"]) == {"client-0"}
    # Clipping adapts from round 1's median norm: the boosted update is clipped in round 2.
    assert attacked[1]["attackers"]["client-0"]["clipped"]
    assert not by_name["fedavg-no-clip/1xsign-flip"]["rounds"][1]["attackers"]["client-0"][
        "clipped"]
    assert all(r["rounds"][1]["attackers"] == {} for r in runs if r["attackers"] == 0)
    robustness.write_outputs(tmp_path / "out", runs, {"clients": 4})
    assert len(json.loads((tmp_path / "out" / "results.json").read_text())["runs"]) == len(runs)
    cells = _report_cells((tmp_path / "out" / "report.md").read_text())
    final = {r["scenario"]: r["final_accuracy"] for r in runs}
    assert set(cells) == set(final)
    for scenario, (accuracy, change) in cells.items():
        assert accuracy == pytest.approx(100 * final[scenario], abs=0.05), scenario
        defence, attack = scenario.split("/")
        baseline = final[f"{defence}/no-attack"]
        expected = None if attack == "no-attack" else 100 * (final[scenario] - baseline)
        assert change == pytest.approx(expected, abs=0.1), scenario


def _report_cells(report: str) -> dict[str, tuple[float, float | None]]:
    """The report's table: "defence/column" -> (accuracy %, change in points or None)."""
    rows = [[c.strip() for c in line.strip("|").split("|")]
            for line in report.splitlines() if line.startswith("| ")]
    (_, *columns), *body = rows
    cells: dict[str, tuple[float, float | None]] = {}
    for defence, *values in body:
        for column, value in zip(columns, values, strict=True):
            accuracy, _, change = value.partition(" (")
            cells[f"{defence}/{column}"] = (float(accuracy),
                                            float(change.rstrip(")")) if change else None)
    return cells


def test_the_command_runs_a_run_file_with_overrides(tmp_path: Path) -> None:
    data = write_toy_csv(tmp_path / "toy.csv", n=600)
    run_file = tmp_path / "run.toml"
    run_file.write_text(
        f'[model]\nsource = "tiny-llama"\nmax_length = 48\n'
        f'[data]\ndataset = "{data}"\ntest_size = 100\nvalidation_size = 0\n'
        f"unlabeled_per_client = 8\n"
        f'[run]\nmethods = ["lp-fl"]\nthreads = 1\n')
    out = tmp_path / "out"
    assert robustness.main(["--config", str(run_file), "--set", "data.shots_per_class=6",
                            "--out", str(out), "--clients", "3", "--rounds", "1",
                            "--attackers", "1", "--attacks", "random",
                            "--defences", "median"]) == 0
    document = json.loads((out / "results.json").read_text())
    assert [r["scenario"] for r in document["runs"]] == ["median/no-attack", "median/1xrandom"]
    assert document["meta"]["config"]["data"]["num_clients"] == 3
    assert document["meta"]["config"]["data"]["shots_per_class"] == 6
