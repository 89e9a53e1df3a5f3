"""The DP accuracy benchmark (``bench/privacy_accuracy.py``): noise calibrated to the target ε,
runs at each ε and without noise, resumable, with its report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import privacy_accuracy as bench

RUN = """
[model]
source = "tiny-llama"
max_length = 48
[data]
test_size = 300
validation_size = 20
shots_per_class = 6
unlabeled_per_client = 4
num_clients = 6
[federation]
rounds = 2
clients_per_round = 3
local_steps = 1
batch_size = 4
[run]
methods = ["lp-fl"]
eval_every = 0
[server.round]
clip = "absolute"
clip-norm = 0.5
[server.round.privacy]
delta = 1e-5
"""


def test_the_noise_is_the_least_that_stays_within_epsilon() -> None:
    epsilon = 4.0
    noise = bench.noise_for(epsilon, 64, 16, 10, 1e-5)
    assert bench.spent(noise, 64, 16, 10, 1e-5) <= epsilon
    assert bench.spent(noise * 0.98, 64, 16, 10, 1e-5) > epsilon
    # The same sampling rate needs about the same noise multiplier in a larger fleet.
    assert bench.noise_for(epsilon, 1000, 250, 10, 1e-5) == pytest.approx(noise, rel=0.05)


def test_a_tiny_benchmark_runs_each_epsilon_and_resumes(tmp_path: Path) -> None:
    config, out = tmp_path / "run.toml", tmp_path / "out"
    config.write_text(RUN, encoding="utf-8")
    args = ["--config", str(config), "--out", str(out), "--epsilons", "8"]
    assert bench.main(args) == 0
    runs = json.loads((out / "results.json").read_text(encoding="utf-8"))["runs"]
    assert [(r["epsilon_target"], r["seed"], r["split"]) for r in runs] == [
        (0.0, 0, "validation"), (8.0, 0, "validation")]
    reference, noisy = runs
    assert reference["noise_multiplier"] == 0 and reference["epsilon_spent"] is None
    assert noisy["noise_multiplier"] > 0 and 0 < noisy["epsilon_spent"] <= 8
    assert noisy["rounds"][-1]["epsilon"] == pytest.approx(noisy["epsilon_spent"])
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "| none | 0 | 0 |" in report and "| 8 |" in report
    assert (out / "accuracy.png").stat().st_size > 0
    assert bench.main(args) == 0  # resumed: nothing new
    assert len(json.loads((out / "results.json").read_text(encoding="utf-8"))["runs"]) == 2


def test_differential_privacy_needs_an_absolute_clip(tmp_path: Path) -> None:
    config = tmp_path / "run.toml"
    config.write_text(RUN.replace('clip = "absolute"\nclip-norm = 0.5', 'clip = "off"'),
                      encoding="utf-8")
    assert bench.main(["--config", str(config), "--out", str(tmp_path / "out")]) == 2
