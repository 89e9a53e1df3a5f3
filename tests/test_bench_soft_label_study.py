"""The soft-label study (``bench/soft_label_study.py``) at a tiny size: variants at one learning
rate, scored on validation, resumable, extendable, refused when the base settings change."""

from __future__ import annotations

import json
from pathlib import Path

from bench import soft_label_study

STUDY = """
[model]
source = "tiny-llama"
max_length = 48
[soft_labels]
threshold = 0.0
growth = 4
start_round = 1
gold_share = 0.0
target = "distribution"
[data]
test_size = 300
validation_size = 13
shots_per_class = 2
unlabeled_per_client = 6
num_clients = 2
[federation]
rounds = 2
clients_per_round = 2
local_steps = 1
batch_size = 4
[run]
eval_every = 0
[variants.no-soft]
method = "lp-fl-no-soft"
[variants.argmax]
method = "lp-fl"
set = ["soft_labels.gold_share=0.5", "soft_labels.target='argmax'"]
"""


def test_tiny_study_runs_resumes_extends_and_refuses(tmp_path: Path) -> None:
    config, out = tmp_path / "study.toml", tmp_path / "out"
    config.write_text(STUDY, encoding="utf-8")
    assert soft_label_study.main(["--config", str(config), "--out", str(out)]) == 0
    runs = json.loads((out / "results.json").read_text(encoding="utf-8"))["runs"]
    assert [(r["variant"], r["split"], r["seed"]) for r in runs] == [
        ("no-soft", "validation", 0), ("argmax", "validation", 0)]
    argmax = runs[1]
    assert argmax["overrides"] == ["soft_labels.gold_share=0.5", "soft_labels.target='argmax'"]
    assert [r["accuracy"] is None for r in argmax["rounds"]] == [True, False]
    assert argmax["rounds"][-1]["gold_share"] == 0.5 and argmax["rounds"][-1]["soft_labels_added"]
    # Scored on the 13 validation texts, not the 300 test texts (13 shares no factor with 300).
    scaled = argmax["final_accuracy"] * 13
    assert abs(scaled - round(scaled)) < 1e-4 and 0 < round(scaled) < 13
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "| argmax | lp-fl | soft_labels.gold_share=0.5 soft_labels.target='argmax' | 0 |" in (
        report)

    # A new variant joins the same results file; finished runs are not repeated.
    config.write_text(STUDY + '[variants.sharp]\nmethod = "lp-fl"\n'
                      'set = ["soft_labels.temperature=0.5"]\n', encoding="utf-8")
    assert soft_label_study.main(["--config", str(config), "--out", str(out)]) == 0
    runs = json.loads((out / "results.json").read_text(encoding="utf-8"))["runs"]
    assert [r["variant"] for r in runs] == ["no-soft", "argmax", "sharp"]

    # Other base settings would mix incomparable runs: refused.
    config.write_text(STUDY.replace("rounds = 2", "rounds = 3"), encoding="utf-8")
    assert soft_label_study.main(["--config", str(config), "--out", str(out)]) == 2
