"""The settings of one round's training task: what the server sends each sampled client.

:class:`TaskSettings` is typed and validated like the run file; on the wire (the task message's
``settings``) it is a flat JSON object (:meth:`TaskSettings.to_wire`). A client rebuilds it with
:meth:`TaskSettings.from_wire`, which refuses unknown keys and bad values with a message naming
them, so a client never trains on settings it did not understand. Soft-label defaults come from
:class:`~lpfl.config.SoftLabelSchedule` and nowhere else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lpfl.config import SoftLabelSchedule, build_section
from lpfl.errors import ConfigError

SOFT_LABEL_PREFIX = "soft_label_"
CLIENT_SOFT_LABEL_FIELDS = ("threshold", "balanced", "weight", "gold_share", "target",
                            "temperature", "teacher_patterns", "agreement", "align",
                            "lm_weight")
"""The :class:`SoftLabelSchedule` fields a client applies; the others (growth, cap, start
round) are the server's and reach the client as ``soft_label_budget``."""


@dataclass(frozen=True)
class TaskSettings:
    """One client's training task for one round."""

    seed: int
    local_steps: int
    batch_size: int
    lr: float
    weight_decay: float = 0.0
    soft_label_budget: int = 0
    """How many soft labels the client may add this round (0: none)."""
    soft_labels: SoftLabelSchedule = field(default_factory=SoftLabelSchedule)

    def __post_init__(self) -> None:
        for name in ("local_steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"task setting {name}={getattr(self, name)} must be >= 1")
        if self.lr < 0.0 or self.weight_decay < 0.0:
            raise ConfigError(f"task settings lr={self.lr} and weight_decay="
                              f"{self.weight_decay} must be >= 0")
        if self.soft_label_budget < 0:
            raise ConfigError(f"task setting soft_label_budget={self.soft_label_budget} "
                              "must be >= 0")

    def to_wire(self) -> dict[str, Any]:
        """The flat JSON object a task message carries."""
        plain: dict[str, Any] = {"seed": self.seed, "local_steps": self.local_steps,
                                 "batch_size": self.batch_size, "lr": self.lr,
                                 "weight_decay": self.weight_decay,
                                 "soft_label_budget": self.soft_label_budget}
        schedule = self.soft_labels
        for name in CLIENT_SOFT_LABEL_FIELDS:
            value = getattr(schedule, name)
            plain[SOFT_LABEL_PREFIX + name] = (list(value) if isinstance(value, tuple)
                                               else getattr(value, "value", value))
        return plain

    @classmethod
    def from_wire(cls, settings: Mapping[str, Any]) -> TaskSettings:
        """Rebuild the settings from a task message; a ConfigError names what is wrong."""
        top = {f.name for f in dataclasses.fields(cls)} - {"soft_labels"}
        soft_keys = {SOFT_LABEL_PREFIX + name for name in CLIENT_SOFT_LABEL_FIELDS}
        unknown = sorted(set(settings) - top - soft_keys)
        if unknown:
            raise ConfigError(f"task settings have unknown keys {unknown}: the server runs "
                              "another lpfl version; use the same version on both sides")
        missing = sorted({"seed", "local_steps", "batch_size", "lr"} - set(settings))
        if missing:
            raise ConfigError(f"task settings lack {missing}")
        soft = {key.removeprefix(SOFT_LABEL_PREFIX): value for key, value in settings.items()
                if key in soft_keys}
        plain = {key: value for key, value in settings.items() if key in top}
        return build_section(cls, {**plain, "soft_labels": soft}, "task settings")
