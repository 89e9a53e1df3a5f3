"""Task settings: typed in the core, flat JSON on the wire, refused when not understood."""

from __future__ import annotations

from typing import Any

import pytest

from lpfl.config import SoftLabelSchedule, SoftTarget
from lpfl.errors import ConfigError
from lpfl.task import TaskSettings

TASK = TaskSettings(seed=3, local_steps=8, batch_size=4, lr=1e-3, weight_decay=0.01,
                    soft_label_budget=32,
                    soft_labels=SoftLabelSchedule(threshold=0.7, gold_share=0.5,
                                                  target=SoftTarget.ARGMAX,
                                                  teacher_patterns=("A: {text} B:",),
                                                  agreement=True, lm_weight=0.5))


def test_round_trip_through_the_wire_form() -> None:
    wire = TASK.to_wire()
    assert wire == {
        "seed": 3, "local_steps": 8, "batch_size": 4, "lr": 1e-3, "weight_decay": 0.01,
        "soft_label_budget": 32, "soft_label_threshold": 0.7, "soft_label_balanced": True,
        "soft_label_weight": 1.0, "soft_label_gold_share": 0.5, "soft_label_target": "argmax",
        "soft_label_temperature": 1.0, "soft_label_teacher_patterns": ["A: {text} B:"],
        "soft_label_agreement": True, "soft_label_align": False,
        "soft_label_lm_weight": 0.5}
    back = TaskSettings.from_wire(wire)
    # The server's scheduling fields (growth, cap, start round) do not travel: defaults return.
    assert back.soft_labels.growth == SoftLabelSchedule().growth
    assert back.to_wire() == wire


def test_missing_soft_label_keys_take_the_schedule_defaults() -> None:
    task = TaskSettings.from_wire({"seed": 0, "local_steps": 1, "batch_size": 2, "lr": 0.1})
    assert task.soft_labels == SoftLabelSchedule() and task.soft_label_budget == 0


@pytest.mark.parametrize(("change", "fragment"), [
    ({"soft_label_loss": "kl"}, "unknown keys ['soft_label_loss']"),
    ({"lr": None}, "task settings.lr must be a number"),
    ({"local_steps": 0}, "local_steps=0 must be >= 1"),
    ({"soft_label_target": "kl"}, "soft_labels.target='kl': use one of"),
    ({"soft_label_threshold": 2.0}, "threshold=2.0 must be between 0 and 1"),
])
def test_bad_settings_are_refused_with_the_key(change: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        TaskSettings.from_wire({**TASK.to_wire(), **change})
    assert fragment in str(info.value)


def test_required_keys() -> None:
    with pytest.raises(ConfigError, match=r"lack \['lr', 'seed'\]"):
        TaskSettings.from_wire({"local_steps": 1, "batch_size": 2})
