"""The accuracy benchmark at a tiny size: equal searches on validation, the grid, matched
learning rates, transfer, refusals and the report (tiny-llama, one round)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lpfl.benchmark import README_END, README_START, load_bench
from lpfl.cli import main
from lpfl.errors import ConfigError

BENCH = """
[model]
source = "tiny-llama"
max_length = 48
[soft_labels]
threshold = 0.5
growth = 2
start_round = 1
[data]
test_size = 300
test_limit = 16
validation_size = 12
shots_per_class = 2
unlabeled_per_client = 4
num_clients = 2
[federation]
rounds = 1
clients_per_round = 2
local_steps = 1
batch_size = 4
[run]
eval_batch_size = 16
[bench]
shots = [2]
partitions = ["iid"]
seeds = [0]
methods = ["lp-fl", "lp-fl-no-soft", "zero-shot"]
accuracy_targets = { "2" = 0.99 }
[bench.search.lp-fl]
"federation.lr" = [1e-3, 1e-2]
[bench.search.lp-fl-no-soft]
"federation.lr" = [3e-3, 3e-2]
[bench.transfer]
"data.dataset" = "amazon"
"prompt.pattern" = "Review: {text}\\nAll in all, the product was"
"""


def test_tiny_benchmark_selects_runs_matches_transfers_and_reports(tmp_path: Path) -> None:
    config = tmp_path / "bench.toml"
    config.write_text(BENCH, encoding="utf-8")
    out = tmp_path / "out"
    assert main(["bench", "accuracy", "--config", str(config), "--out", str(out)]) == 0
    runs = json.loads((out / "results.json").read_text(encoding="utf-8"))["runs"]
    selection = [r for r in runs if r["kind"] == "selection"]
    assert sorted((r["method"], r["values"]["federation.lr"]) for r in selection) == [
        ("lp-fl", 1e-3), ("lp-fl", 1e-2), ("lp-fl-no-soft", 3e-3), ("lp-fl-no-soft", 3e-2)]
    chosen = {}
    for method in ("lp-fl", "lp-fl-no-soft"):
        scored = [r for r in selection if r["method"] == method]
        best = max(scored, key=lambda r: r["final_accuracy"])["final_accuracy"]
        chosen[method] = next(r for r in scored if r["final_accuracy"] == best)["values"]
    grid = {r["method"]: r for r in runs if r["kind"] == "grid"}
    assert set(grid) == {"lp-fl", "lp-fl-no-soft", "zero-shot"}
    assert grid["lp-fl"]["values"] == chosen["lp-fl"]
    assert grid["lp-fl"]["rounds"][-1]["teacher_pool_accuracy"] is not None
    matched = [r for r in runs if r["kind"] == "matched"]
    assert [(r["method"], r["values"]) for r in matched] == [("lp-fl-no-soft", chosen["lp-fl"])]
    transfer = [r for r in runs if r["kind"] == "transfer"]
    assert {r["dataset"] for r in transfer} == {"amazon"}
    assert {r["dataset"] for r in runs if r["kind"] != "transfer"} == {"mr"}
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "LP-FL ≥ LP-FL without soft labels + 3 pts" in report
    assert "LP-FL ≥ 0.99" in report and "At one learning rate" in report
    assert "Transfer (data.dataset = 'amazon'" in report

    # A rerun resumes (nothing new), another config is refused, the README block is rewritten.
    assert main(["bench", "accuracy", "--config", str(config), "--out", str(out)]) == 0
    assert len(json.loads((out / "results.json").read_text(encoding="utf-8"))["runs"]) == len(
        runs)
    assert main(["bench", "accuracy", "--config", str(config), "--out", str(out),
                 "--set", "federation.rounds=2"]) == 2
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_START}\nold table\n{README_END}\nrest\n", encoding="utf-8")
    assert main(["bench", "accuracy", "--out", str(out), "--report-only",
                 "--readme", str(readme)]) == 0
    text = readme.read_text(encoding="utf-8")
    assert "old table" not in text and text.startswith("intro\n") and text.endswith("rest\n")
    assert "Measured on:" in text and "| 2 | iid |" in text


def test_searches_of_different_sizes_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "bench.toml"
    config.write_text(BENCH.replace('"federation.lr" = [3e-3, 3e-2]', '"federation.lr" = [3e-3]'),
                      encoding="utf-8")
    with pytest.raises(ConfigError, match="same size"):
        load_bench(config)
    config.write_text(BENCH.replace('[bench.search.lp-fl-no-soft]\n"federation.lr" = [3e-3, 3e-2]',
                                    ""), encoding="utf-8")
    with pytest.raises(ConfigError, match="no candidates for 'lp-fl-no-soft'"):
        load_bench(config)
