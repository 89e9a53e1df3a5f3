"""The methods a run can compare, as a table: what each trains, and how.

Everything that depends on the method (the training mode, soft labels, centralized or federated)
reads it from :func:`lookup`, never from the method's name.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Trains(enum.Enum):
    """What a method trains (the value is the :func:`lpfl.model.adapters.set_mode` mode)."""

    LORA = "lora"
    FULL = "full"
    NOTHING = "frozen"


@dataclass(frozen=True)
class Method:
    """One method: ``trains`` what, with ``soft`` labels or not, ``centralized`` (all data on
    one machine, the federation's steps in one) or federated."""

    name: str
    trains: Trains
    soft: bool
    centralized: bool

    @property
    def federated(self) -> bool:
        return self.trains is not Trains.NOTHING and not self.centralized

    def soft_counterpart(self) -> Method | None:
        """The same method with soft labels, for a method without them; else None."""
        if self.soft or self.trains is Trains.NOTHING:
            return None
        return next(m for m in TABLE if m.soft and (m.trains, m.centralized) == (
            self.trains, self.centralized))


TABLE = (
    Method("lp-fl", Trains.LORA, soft=True, centralized=False),
    Method("lp-fl-no-soft", Trains.LORA, soft=False, centralized=False),
    Method("fp-fl", Trains.FULL, soft=True, centralized=False),
    Method("fp-fl-no-soft", Trains.FULL, soft=False, centralized=False),
    Method("centralized", Trains.LORA, soft=True, centralized=True),
    Method("centralized-no-soft", Trains.LORA, soft=False, centralized=True),
    Method("zero-shot", Trains.NOTHING, soft=False, centralized=False),
)
"""Every method ``lpfl simulate`` knows; ``zero-shot`` reports raw and median-calibrated runs."""

METHODS = tuple(m.name for m in TABLE)


def lookup(name: str) -> Method:
    """The table row of ``name``; a ValueError lists the known ones."""
    for row in TABLE:
        if row.name == name:
            return row
    raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
