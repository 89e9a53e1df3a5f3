"""End to end on a tiny model: the federation must really learn a separable task."""

import statistics
from pathlib import Path

import pytest
import torch

from lpfl.simulate import federated_data, fresh_prompt_model, round_settings, run_method
from lpfl.training import median_calibrated_predictions
from tests.conftest import tiny_config


def quiet(_: str) -> None:
    pass


@pytest.mark.parametrize("method", ["lp-fl", "fp-fl", "centralized"])
def test_tiny_federation_learns_toy_task(toy_csv: Path, method: str) -> None:
    config = tiny_config(
        str(toy_csv),
        data={"test_size": 100, "shots_per_class": 16, "unlabeled_per_client": 32,
              "num_clients": 3},
        federation={"rounds": 4, "clients_per_round": 3, "local_steps": 6, "batch_size": 8,
                    "lr": 5e-3, "learning_rates": {"fp-fl": 1e-3}},
        lora={"r": 4, "target_modules": ["q_proj", "v_proj", "o_proj"]},
        soft_labels={"threshold": 0.6, "growth": 8, "start_round": 2},
    )
    data = federated_data(config, seed=0)
    run = run_method(config, method, 0, data, progress=quiet)
    accuracies = [r["accuracy"] for r in run["rounds"]]
    assert run["final_accuracy"] >= 0.85, accuracies
    assert run["rounds"][-1]["soft_labels_added"] > 0


def test_lp_fl_sends_a_small_fraction_of_fp_fl(toy_csv: Path) -> None:
    config = tiny_config(str(toy_csv), federation={"rounds": 1})
    data = federated_data(config, seed=0)
    lp = run_method(config, "lp-fl", 0, data, progress=quiet)
    fp = run_method(config, "fp-fl", 0, data, progress=quiet)
    assert lp["rounds"][0]["uplink_bytes"] * 20 < fp["rounds"][0]["uplink_bytes"]
    assert lp["trainable_parameters"] * 20 < fp["trainable_parameters"]


def test_zero_shot_reports_raw_and_calibrated(toy_csv: Path) -> None:
    """Both accuracies recomputed here from the frozen model's logits: raw is the argmax,
    calibrated thresholds ``s1 - s0`` at its (lower) median over the clients' unlabeled text."""
    config = tiny_config(str(toy_csv))
    data = federated_data(config, 0)
    run = run_method(config, "zero-shot", 0, data, progress=quiet)

    frozen = fresh_prompt_model(config, "frozen", 0)
    batch = config.run.eval_batch_size
    test = frozen.score([e.text for e in data.test], batch).tolist()
    reference = frozen.score([e.text for e in data.all_unlabeled()], batch).tolist()
    labels = [e.label for e in data.test]
    threshold = statistics.median_low(s1 - s0 for s0, s1 in reference)
    raw = [max((0, 1), key=lambda c: row[c]) for row in test]
    calibrated = [int(s1 - s0 > threshold) for s0, s1 in test]
    assert run["raw_accuracy"] == pytest.approx(fraction_correct(raw, labels))
    assert run["calibrated_accuracy"] == pytest.approx(fraction_correct(calibrated, labels))
    assert run["final_accuracy"] == run["calibrated_accuracy"] == run["rounds"][0]["accuracy"]
    assert run["rounds"][0]["uplink_bytes"] == run["rounds"][0]["downlink_bytes"] == 0


def fraction_correct(predicted: list[int], labels: list[int]) -> float:
    return sum(p == y for p, y in zip(predicted, labels, strict=True)) / len(labels)


def test_zero_shot_calibration_undoes_a_prompts_bias() -> None:
    """However strongly the prompt favours one class, calibration on the reference texts calls
    exactly those above the median margin class 1 (two classes), and gives every class some
    texts (three classes)."""
    generator = torch.Generator().manual_seed(0)
    biased = torch.randn(101, 2, generator=generator) + torch.tensor([8.0, 0.0])
    assert int(biased.argmax(-1).sum()) == 0  # raw: always class 0
    ones = int(median_calibrated_predictions(biased, biased).sum())
    assert ones == 50  # 101 distinct margins: 50 above the median, the median itself not
    three = torch.randn(90, 3, generator=generator) + torch.tensor([0.0, 8.0, 0.0])
    assert set(three.argmax(-1).tolist()) == {1}  # raw: always class 1
    counts = torch.bincount(median_calibrated_predictions(three, three), minlength=3)
    assert all(count > 0 for count in counts.tolist()), counts


def test_centralized_gets_the_whole_federations_steps_and_soft_labels() -> None:
    config = tiny_config(federation={"clients_per_round": 2, "local_steps": 3},
                         soft_labels={"growth": 5, "start_round": 1})
    fed = round_settings(config, "lp-fl", 0)(2)
    central = round_settings(config, "centralized", 0)(2)
    assert (fed.local_steps, fed.soft_label_budget) == (3, 10)
    assert (central.local_steps, central.soft_label_budget) == (6, 20)
    assert round_settings(config, "centralized-no-soft", 0)(2).soft_label_budget == 0
    assert fed.soft_labels == config.soft_labels


def test_a_teacher_ensemble_is_evaluated_beside_the_student(toy_csv: Path) -> None:
    config = tiny_config(
        str(toy_csv), federation={"rounds": 3}, run={"eval_every": 2},
        soft_labels={"threshold": 0.0, "growth": 4, "start_round": 1, "gold_share": 0.5,
                     "target": "argmax", "teacher_patterns": ["Text: {text} Label:"]})
    run = run_method(config, "lp-fl", 0, federated_data(config, 0), progress=quiet)
    rounds = run["rounds"]
    assert [r["accuracy"] is None for r in rounds] == [True, False, False]
    assert [r["teacher_accuracy"] is None for r in rounds] == [True, False, False]
    assert all(0.0 <= r["teacher_pool_accuracy"] <= 1.0 for r in rounds)
    assert all(r["gold_share"] == 0.5 for r in rounds)
    no_soft = run_method(config, "lp-fl-no-soft", 0, federated_data(config, 0), progress=quiet)
    assert no_soft["rounds"][-1]["teacher_accuracy"] is None
    assert no_soft["rounds"][-1]["gold_share"] == 1.0
