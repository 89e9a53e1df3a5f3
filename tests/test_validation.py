"""The one check an update passes before it is aggregated (lpfl.validation), directly and as the
simulation meets it: a bad update becomes its client's rejected outcome, never a crash."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from lpfl import wire
from lpfl.protocol import RoundRules
from lpfl.records import ClientStatus
from lpfl.rounds import DrivenRound, drive
from lpfl.strategy import ClientUpdate
from lpfl.trainer_api import Trainer
from lpfl.validation import InvalidUpdate, check_update
from tests import fake_federation as ff

REFERENCE = {"a": torch.zeros(2, 3), "b": torch.ones(4)}


def test_a_good_update_passes() -> None:
    check_update({"a": torch.ones(2, 3), "b": torch.zeros(4)}, REFERENCE, 1, {"loss": 0.5})
    check_update(dict(REFERENCE), REFERENCE, wire.MAX_EXAMPLES, {})


BAD: dict[str, tuple[Mapping[str, torch.Tensor], object, Mapping[str, object], str]] = {
    "missing key": ({"a": torch.zeros(2, 3)}, 1, {},
                    "tensor names differ from the global state: missing ['b'], unexpected []"),
    "extra key": ({**REFERENCE, "c": torch.zeros(1)}, 1, {}, "missing [], unexpected ['c']"),
    "shape": ({"a": torch.zeros(3, 2), "b": torch.ones(4)}, 1, {},
              "tensor 'a' has shape (3, 2), expected (2, 3)"),
    "dtype": ({"a": torch.zeros(2, 3, dtype=torch.float64), "b": torch.ones(4)}, 1, {},
              "tensor 'a' is torch.float64, expected torch.float32"),
    "nan": ({"a": torch.zeros(2, 3), "b": torch.full((4,), math.nan)}, 1, {},
            "tensor 'b' is not finite"),
    "inf": ({"a": torch.full((2, 3), -math.inf), "b": torch.ones(4)}, 1, {},
            "tensor 'a' is not finite"),
    "zero examples": (REFERENCE, 0, {}, "num_examples 0 must be an integer in [1, 2147483647]"),
    "negative examples": (REFERENCE, -5, {}, "num_examples -5 must be an integer"),
    "too many examples": (REFERENCE, wire.MAX_EXAMPLES + 1, {}, "must be an integer in [1,"),
    "boolean examples": (REFERENCE, True, {}, "num_examples True must be an integer"),
    "float examples": (REFERENCE, 3.0, {}, "num_examples 3.0 must be an integer"),
    "nan metric": (REFERENCE, 1, {"loss": math.nan}, "metric 'loss' is nan, not a finite number"),
    "text metric": (REFERENCE, 1, {"loss": "low"}, "metric 'loss' is 'low'"),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_a_bad_update_is_refused_with_what_is_wrong(kind: str) -> None:
    state, examples, metrics, message = BAD[kind]
    with pytest.raises(InvalidUpdate) as info:
        check_update(state, REFERENCE, examples, metrics)
    assert message in str(info.value)


@dataclass
class BadTrainer(ff.FakeTrainer):
    """An honest fake client, except that its update in round 1 is spoilt as ``kind`` says."""

    kind: str = "zero examples"

    def train_round(self, round_number: int, global_state: dict[str, torch.Tensor],
                    settings: dict[str, Any]) -> ClientUpdate:
        honest = super().train_round(round_number, global_state, settings)
        if round_number != 1:
            return honest
        state = dict(honest.state)
        name = next(iter(state))
        match self.kind:
            case "zero examples":
                return ClientUpdate(self.client_id, state, 0, honest.metrics)
            case "negative examples":
                return ClientUpdate(self.client_id, state, -2, honest.metrics)
            case "shape":
                state[name] = torch.zeros(7)
            case "missing key":
                del state[name]
            case "nan":
                state[name] = state[name] * math.nan
        return ClientUpdate(self.client_id, state, honest.num_examples, honest.metrics)


@pytest.mark.parametrize("kind", ["zero examples", "negative examples", "shape", "missing key",
                                  "nan"])
def test_in_the_simulation_a_bad_update_is_a_rejected_outcome(kind: str) -> None:
    ids = ["c-1", "c-2", "c-3"]
    trainers: dict[str, Trainer] = {cid: ff.FakeTrainer(cid) for cid in ids}
    trainers["c-2"] = BadTrainer("c-2", kind=kind)
    seen: list[DrivenRound] = []
    drive(ff.strategy(3), ff.initial_state(), RoundRules(), 2, trainers, ff.evaluate, seen.append)
    first = seen[0].record()
    outcomes = {c.client_id: c.outcome for c in first.clients}
    bad = outcomes.pop("c-2")
    assert (bad.status, bad.code) == (ClientStatus.REJECTED, wire.E_INVALID_UPDATE)
    assert bad.reason and bad.num_examples == 0 and not bad.metrics
    assert {o.status for o in outcomes.values()} == {ClientStatus.UPDATED}
    assert first.summary()["clients"] == ["c-1", "c-3"]
    assert {c.outcome.status for c in seen[1].record().clients} == {ClientStatus.UPDATED}
