"""Differential privacy: the accountant against dp-accounting's own computation, the server's
noise, ε in every round's record, the budget, and resuming."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import dp_accounting as dp
import numpy as np
import pytest
import torch

from lpfl import protocol as p
from lpfl import wire
from lpfl.errors import ConfigError
from lpfl.privacy import Accountant, DpRound, PrivacyRules
from lpfl.records import ClientOutcome, ClientRecord, ClientStatus, RoundRecord
from lpfl.rounds import DrivenRound, drive
from lpfl.strategy import Aggregation, FedAvg
from lpfl.tensors import encode_tensors
from lpfl.transport import load_server_config
from tests import fake_federation as ff

CAPS = {"backend": "fake", "cpu_arch": "x86_64", "memory_bytes": 1, "runtime": {}}
GLOBAL = {"a": torch.zeros(2, 3), "b": torch.zeros(4)}
DELTA = 1e-5
SAMPLED = DpRound(1.1, 100, 10)
EVERYONE = DpRound(1.1, 10, 10)
DP = PrivacyRules(noise_multiplier=1.1, delta=DELTA)
RULES = p.RoundRules(clip=p.ClipMode.ABSOLUTE, clip_norm=1.0, privacy=DP)


def reference_epsilon(events: list[tuple[Any, int]]) -> float:
    """dp-accounting's RDP accountant, fed the events directly."""
    accountant = dp.rdp.RdpAccountant(neighboring_relation=dp.NeighboringRelation.REPLACE_ONE)
    accountant.compose(dp.ComposedDpEvent([dp.SelfComposedDpEvent(e, n) for e, n in events]))
    return float(accountant.get_epsilon(DELTA))


def test_epsilon_matches_dp_accountings_own_computation_for_a_fixed_schedule() -> None:
    schedule = [SAMPLED] * 5 + [EVERYONE] * 3 + [SAMPLED] * 2
    accountant = Accountant(DELTA, history=schedule)
    wor = dp.SampledWithoutReplacementDpEvent(100, 10, dp.GaussianDpEvent(1.1))
    expected = reference_epsilon([(wor, 7), (dp.GaussianDpEvent(1.1), 3)])
    assert accountant.epsilon() == pytest.approx(expected, rel=1e-12)
    assert accountant.rounds == 10
    # One more round "then" is what spending it gives.
    then = accountant.epsilon(SAMPLED)
    accountant.spend(SAMPLED)
    assert accountant.epsilon() == then > expected
    # Without amplification every round counts as if every client took part.
    plain = Accountant(DELTA, amplification=False, history=schedule)
    assert plain.epsilon() == pytest.approx(reference_epsilon([(dp.GaussianDpEvent(1.1), 10)]))
    assert plain.epsilon() > expected
    assert Accountant(DELTA).epsilon() == 0.0


def test_unsampled_rounds_match_the_gaussian_mechanisms_closed_form() -> None:
    # T Gaussian releases of noise multiplier z have RDP T·α/(2z²) at order α; dp-accounting
    # turns RDP into (ε, δ) with the conversion of Canonne, Kamath and Steinke (2020),
    # ε = min over α of RDP + log(1 - 1/α) - (log δ + log α) / (α - 1).
    rounds, z = 20, 1.5
    orders = np.array(dp.rdp.rdp_privacy_accountant.DEFAULT_RDP_ORDERS, dtype=float)
    rdp = rounds * orders / (2 * z**2)
    closed = rdp + np.log1p(-1 / orders) - (math.log(DELTA) + np.log(orders)) / (orders - 1)
    accountant = Accountant(DELTA, history=[DpRound(z, 7, 7)] * rounds)
    assert accountant.epsilon() == pytest.approx(float(closed.min()), rel=1e-9)
    # ...which is tighter than the classic conversion ε = RDP + log(1/δ) / (α - 1).
    assert accountant.epsilon() < float((rdp + math.log(1 / DELTA) / (orders - 1)).min())


def test_the_server_clips_averages_with_equal_weights_and_adds_the_noise_of_the_sum() -> None:
    m = p.RoundMachine(FedAvg(2, 0, lambda r: {}), GLOBAL, RULES, 1,
                       noise=np.random.default_rng(7))
    for cid in ("c1", "c2"):
        m.handle(p.ClientJoined(cid, CAPS))
    far = {"a": torch.full((2, 3), 3.0), "b": torch.full((4,), 3.0)}  # norm sqrt(90): clipped
    near = {"a": torch.full((2, 3), 0.1), "b": torch.zeros(4)}  # norm 0.245: as it is
    m.handle(p.UpdateReceived(wire.Update(1, "c1", encode_tensors(far), 1000)))
    actions = m.handle(p.UpdateReceived(wire.Update(1, "c2", encode_tensors(near), 1)))
    (closed,) = [a for a in actions if isinstance(a, p.RoundClosed)]
    clipped = {k: v / math.sqrt(90) for k, v in far.items()}
    rng = np.random.default_rng(7)
    std = 2 * 1.1 * 1.0 / 2  # 2 z C on the sum, over 2 updates
    for name in ("a", "b"):
        mean = (clipped[name].double() + near[name].double()) / 2  # example counts ignored
        noise = rng.normal(0.0, std, GLOBAL[name].numel()).reshape(GLOBAL[name].shape)
        torch.testing.assert_close(closed.global_state[name],
                                   (mean + torch.from_numpy(noise)).float())
    assert closed.refused == ""  # the noise is far past the norm guard's bound: not applied
    assert closed.privacy == DpRound(1.1, 2, 2).to_dict(
        Accountant(DELTA, history=[DpRound(1.1, 2, 2)]).epsilon(), DELTA)


def test_epsilon_is_in_every_round_record_and_the_budget_ends_the_run_cleanly() -> None:
    ids = [f"c-{i}" for i in range(1, 7)]
    round_cost = DpRound(1.1, 6, 3)
    budget = (Accountant(DELTA, history=[round_cost] * 2).epsilon()
              + Accountant(DELTA, history=[round_cost] * 3).epsilon()) / 2
    rules = dataclasses.replace(RULES, privacy=dataclasses.replace(DP, epsilon_budget=budget))
    seen: list[DrivenRound] = []
    drive(ff.strategy(3), ff.initial_state(), rules, 5,
          {cid: ff.FakeTrainer(cid) for cid in ids}, ff.evaluate, seen.append)
    assert [r.committed.round for r in seen] == [1, 2]  # round 3 would pass the budget
    for number, driven in enumerate(seen, 1):
        record = driven.record()
        assert record.privacy["epsilon"] == pytest.approx(
            Accountant(DELTA, history=[round_cost] * number).epsilon())
        assert record.summary()["epsilon"] == record.privacy["epsilon"]
        assert RoundRecord.from_dict(record.to_dict()) == record
    assert seen[1].committed.privacy["epsilon"] < budget


def test_the_machine_says_why_it_stops_before_the_budget_is_passed() -> None:
    rules = dataclasses.replace(RULES, privacy=dataclasses.replace(DP, epsilon_budget=1.0))
    m = p.RoundMachine(FedAvg(2, 0, lambda r: {}), GLOBAL, rules, 3)
    m.handle(p.ClientJoined("c1", CAPS))
    actions = m.handle(p.ClientJoined("c2", CAPS))
    finished = actions[-1]
    assert isinstance(finished, p.RunFinished)
    assert "privacy budget is spent: round 1 would take ε from 0 to" in finished.reason
    byes = {a.client_id: a.message for a in actions
            if isinstance(a, p.Send) and isinstance(a.message, wire.Bye)}
    assert set(byes) == {"c1", "c2"} and "epsilon_budget=1" in byes["c1"].reason
    assert m.phase is p.Phase.FINISHED
    assert not [a for a in actions if isinstance(a, p.Send) and isinstance(a.message, wire.Task)]


def test_a_resumed_machine_goes_on_from_the_recorded_epsilon() -> None:
    spent = [DpRound(1.1, 2, 2)] * 2
    m = p.RoundMachine(FedAvg(2, 0, lambda r: {}), GLOBAL, RULES, 3, first_round=3,
                       privacy_spent=spent)
    for cid in ("c1", "c2"):
        m.handle(p.ClientJoined(cid, CAPS))
    m.handle(p.UpdateReceived(wire.Update(3, "c1", encode_tensors(GLOBAL), 5)))
    actions = m.handle(p.UpdateReceived(wire.Update(3, "c2", encode_tensors(GLOBAL), 5)))
    (closed,) = [a for a in actions if isinstance(a, p.RoundClosed)]
    assert closed.privacy["epsilon"] == pytest.approx(
        Accountant(DELTA, history=[*spent, DpRound(1.1, 2, 2)]).epsilon())


def test_with_secure_aggregation_the_clients_share_out_the_noise_and_weigh_equally() -> None:
    privacy = dataclasses.replace(DP, secure_aggregation=True)
    rules = p.RoundRules(clip=p.ClipMode.ABSOLUTE, clip_norm=0.5, min_updates=2,
                         privacy=privacy)
    m = p.RoundMachine(FedAvg(5, 0, lambda r: {}), GLOBAL, rules, 1)
    actions: list[p.Action] = []
    for i in range(5):
        actions += m.handle(p.ClientJoined(f"c{i}", CAPS))
    tasks = [a.message for a in actions if isinstance(a, p.Send)
             and isinstance(a.message, wire.Task)]
    params = tasks[0].secure_aggregation
    assert params is not None
    # Each of at least `threshold` survivors adds N(0, σ²/t): the sum has at least σ².
    assert params.noise_std == pytest.approx(2 * 1.1 * 0.5 / math.sqrt(params.threshold))
    assert (params.max_weight, params.clip_norm, params.threshold) == (1, 0.5, 3)


@pytest.mark.parametrize(("rules", "message"), [
    ({"clip": p.ClipMode.ADAPTIVE, "clip_norm": 0.0}, "differential privacy needs clip"),
    ({"aggregation": Aggregation.TRIMMED_MEAN}, "cannot run with differential privacy"),
])
def test_combinations_differential_privacy_cannot_run_are_refused(rules: dict[str, Any],
                                                                  message: str) -> None:
    base: dict[str, Any] = {"clip": p.ClipMode.ABSOLUTE, "clip_norm": 1.0, "privacy": DP}
    with pytest.raises(ConfigError, match=message):
        p.RoundRules(**(base | rules))


def test_privacy_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"epsilon_budget=3.0 needs noise_multiplier > 0"):
        PrivacyRules(epsilon_budget=3.0)
    with pytest.raises(ConfigError, match=r"threshold=0.3 must be in \[0.5, 1\)"):
        PrivacyRules(threshold=0.3)
    with pytest.raises(ConfigError, match="delta=0 must be in"):
        PrivacyRules(noise_multiplier=1.0, delta=0)


def test_records_keep_masked_outcomes_and_privacy_through_json() -> None:
    outcome = ClientRecord("c1", ClientOutcome(ClientStatus.UPDATED, metrics={"x": 1.0},
                                                 masked=True))
    record = RoundRecord(1, 1, 0.5, {}, {"x": 1.0}, [outcome],
                         privacy=SAMPLED.to_dict(2.5, DELTA))
    assert RoundRecord.from_dict(record.to_dict()) == record
    assert DpRound.from_dict(record.privacy) == SAMPLED
    with pytest.raises(ValueError, match="masked update's num_examples"):
        ClientOutcome(ClientStatus.UPDATED, num_examples=3, masked=True)
    with pytest.raises(ValueError, match="no update, masked or not"):
        ClientOutcome(ClientStatus.DROPPED, masked=True)


def test_the_run_file_sets_privacy_in_server_round_privacy(tmp_path: Path) -> None:
    run = tmp_path / "run.toml"
    run.write_text('[server.round]\nclip = "absolute"\nclip-norm = 1.0\nmin-updates = 2\n'
                   "[server.round.privacy]\nsecure-aggregation = true\nnoise-multiplier = 0.9\n"
                   "epsilon-budget = 8.0\n")
    _, settings = load_server_config(run, ["server.round.privacy.delta=1e-6"])
    assert settings.round.privacy == PrivacyRules(secure_aggregation=True, noise_multiplier=0.9,
                                                  epsilon_budget=8.0, delta=1e-6)
    assert settings.to_dict()["round"]["privacy"]["noise_multiplier"] == 0.9
    with pytest.raises(ConfigError, match="aggregation='median' cannot run with secure"):
        load_server_config(run, ['server.round.aggregation="median"'])
