"""The round state machine, event by event, without sockets or clocks."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save as st_save

from lpfl import protocol as p
from lpfl import wire
from lpfl.errors import ConfigError
from lpfl.records import ClientOutcome, ClientStatus
from lpfl.strategy import Aggregation, FedAvg
from lpfl.tensors import encode_tensors

CAPS = {"backend": "fake", "cpu_arch": "x86_64", "memory_bytes": 1, "runtime": {}}
GLOBAL = {"a": torch.zeros(2, 3), "b": torch.ones(4)}


def settings_for(round_number: int) -> dict[str, Any]:
    return {"lr": 0.5, "round": round_number}


def machine(rounds: int = 2, per_round: int = 2, **rules: Any) -> p.RoundMachine:
    return p.RoundMachine(FedAvg(per_round, seed=0, round_settings=settings_for), GLOBAL,
                          p.RoundRules(**rules), rounds)


def state(value: float) -> dict[str, torch.Tensor]:
    return {name: torch.full_like(t, value) for name, t in GLOBAL.items()}


def update(cid: str, round_number: int, value: float, examples: int = 1,
           **metrics: float) -> p.UpdateReceived:
    payload = encode_tensors(state(value))
    return p.UpdateReceived(wire.Update(round_number, cid, payload, examples, metrics))


def sends(actions: list[p.Action], kind: type[wire.Message]) -> dict[str, Any]:
    return {a.client_id: a.message for a in actions
            if isinstance(a, p.Send) and isinstance(a.message, kind)}


def only(actions: list[p.Action], kind: type) -> Any:
    found = [a for a in actions if isinstance(a, kind)]
    assert len(found) == 1, actions
    return found[0]


def phase(m: p.RoundMachine) -> p.Phase:
    """The machine's phase, read through a call so the type checker does not pin it."""
    return m.phase


def join(m: p.RoundMachine, *cids: str) -> list[p.Action]:
    actions: list[p.Action] = []
    for cid in cids:
        actions += m.handle(p.ClientJoined(cid, CAPS))
    return actions


def test_round_waits_for_enough_clients_then_sends_tasks() -> None:
    m = machine(per_round=2)
    first = join(m, "c1")
    assert set(sends(first, wire.Ack)) == {"c1"}
    assert not sends(first, wire.Task)
    assert phase(m) is p.Phase.WAITING
    second = join(m, "c2")
    tasks = sends(second, wire.Task)
    assert set(tasks) == {"c1", "c2"}
    assert tasks["c1"].settings == {"lr": 0.5, "round": 1}
    assert tasks["c1"].tensors is tasks["c2"].tensors  # encoded once per round
    assert only(second, p.StartTimer) == p.StartTimer(1, 1, 120.0)
    assert phase(m) is p.Phase.TRAINING


def test_full_run_matches_in_process_fedavg_and_says_bye() -> None:
    m = machine(rounds=2, per_round=2)
    join(m, "c1", "c2")
    m.handle(update("c1", 1, 1.0, examples=1, train_loss=4.0, soft_labels_added=5.0))
    closed = only(m.handle(update("c2", 1, 4.0, examples=3, train_loss=2.0,
                                  soft_labels_added=2.0)), p.RoundClosed)
    expected = np.average([1.0, 4.0], weights=[1, 3])
    for name, tensor in closed.global_state.items():
        assert torch.allclose(tensor, torch.full_like(GLOBAL[name], expected))
    # Losses are example-weighted, counts summed (lpfl.metrics).
    assert closed.train_metrics == {"soft_labels_added": 7.0,
                                    "train_loss": pytest.approx((4.0 + 3 * 2.0) / 4)}
    assert {c: o.status for c, o in closed.outcomes.items()} == {"c1": "updated", "c2": "updated"}
    assert m.max_update_bytes() > len(encode_tensors(GLOBAL))
    assert phase(m) is p.Phase.EVALUATING
    next_round = m.handle(p.RoundRecorded(1))
    assert set(sends(next_round, wire.Task)) == {"c1", "c2"}
    m.handle(update("c1", 2, 0.0))
    last = m.handle(update("c2", 2, 0.0))
    only(last, p.RoundClosed)
    end = m.handle(p.RoundRecorded(2))
    assert set(sends(end, wire.Bye)) == {"c1", "c2"}
    assert isinstance(end[-1], p.RunFinished)
    assert phase(m) is p.Phase.FINISHED


def test_updates_for_other_rounds_or_from_strangers_are_refused() -> None:
    m = machine(rounds=3, per_round=2, min_clients=3)
    join(m, "c1", "c2", "c3")
    sampled = sorted(m.strategy.sample(1, ["c1", "c2", "c3"]))
    outsider = ({"c1", "c2", "c3"} - set(sampled)).pop()

    def code(event: p.Event) -> str:
        (error,) = sends(m.handle(event), wire.Error).values()
        return str(error.code)

    assert code(update(outsider, 1, 1.0)) == wire.E_NOT_SAMPLED
    assert code(update(sampled[0], 2, 1.0)) == wire.E_WRONG_ROUND
    m.handle(update(sampled[0], 1, 1.0))
    assert code(update(sampled[0], 1, 1.0)) == wire.E_DUPLICATE_UPDATE
    only(m.handle(update(sampled[1], 1, 1.0)), p.RoundClosed)
    assert code(update(sampled[1], 1, 1.0)) == wire.E_LATE_UPDATE
    m.handle(p.RoundRecorded(1))
    assert code(update(sampled[0], 1, 1.0)) == wire.E_STALE_ROUND
    assert m.screen_update(sampled[0], 1) is not None


GOOD = encode_tensors(GLOBAL)
INVALID = {
    "missing": (encode_tensors({"a": torch.zeros(2, 3)}), 5, "missing ['b']"),
    "shape": (encode_tensors({"a": torch.zeros(3, 2), "b": torch.ones(4)}), 5,
              "'a' has shape (3, 2), expected (2, 3)"),
    "extra": (encode_tensors({**GLOBAL, "c": torch.ones(1)}), 5, "unexpected ['c']"),
    "dtype": (st_save({"a": torch.zeros(2, 3, dtype=torch.int32), "b": torch.ones(4)},
                      metadata={"lpfl.encoding": "fp32"}), 5, "'a' is torch.int32"),
    "nan": (encode_tensors({"a": torch.full((2, 3), math.nan), "b": torch.ones(4)}), 5,
            "'a' is not finite"),
    "inf": (encode_tensors({"a": torch.full((2, 3), math.inf), "b": torch.ones(4)}), 5,
            "'a' is not finite"),
    "garbage": (b"not safetensors at all", 5, "tensor payload"),
    "no examples": (GOOD, 0, "num_examples 0 must be an integer in [1, "),
    "negative examples": (GOOD, -3, "num_examples -3 must be an integer in [1, "),
}


@pytest.mark.parametrize("kind", sorted(INVALID))
def test_invalid_updates_get_an_error_and_the_round_still_closes(kind: str) -> None:
    payload, examples, reason = INVALID[kind]
    m = machine(rounds=1, per_round=2)
    join(m, "c1", "c2")
    bad = m.handle(p.UpdateReceived(wire.Update(1, "c1", payload, examples)))
    error = sends(bad, wire.Error)["c1"]
    assert error.code == wire.E_INVALID_UPDATE and reason in error.reason
    closed = only(m.handle(update("c2", 1, 2.0)), p.RoundClosed)
    outcome = closed.outcomes["c1"]
    assert (outcome.status, outcome.code, outcome.reason) == (
        ClientStatus.REJECTED, wire.E_INVALID_UPDATE, error.reason)
    assert torch.equal(closed.global_state["b"], torch.full((4,), 2.0))


def test_dropped_client_counts_as_no_update_and_quorum_closes_the_round() -> None:
    m = machine(rounds=1, per_round=3, min_updates=2)
    join(m, "c1", "c2", "c3")
    m.handle(update("c1", 1, 1.0))
    assert m.handle(p.ClientLeft("c3")) == []
    closed = only(m.handle(update("c2", 1, 3.0)), p.RoundClosed)
    assert closed.outcomes["c3"].status == "dropped"
    assert torch.equal(closed.global_state["a"], torch.full((2, 3), 2.0))


def test_deadline_closes_the_round_and_stale_timers_are_ignored() -> None:
    m = machine(rounds=2, per_round=2)
    join(m, "c1", "c2")
    m.handle(update("c1", 1, 1.0))
    assert m.handle(p.DeadlinePassed(1, 2)) == []
    closed = only(m.handle(p.DeadlinePassed(1, 1)), p.RoundClosed)
    assert closed.outcomes["c2"].status == "timed_out"
    m.handle(p.RoundRecorded(1))
    assert m.handle(p.DeadlinePassed(1, 1)) == []


def test_over_selection_closes_the_round_once_enough_updates_are_in() -> None:
    """Four sampled, two wanted: the round closes at the second update, the others are late,
    and a late update is refused and changes nothing."""
    m = machine(rounds=2, per_round=4, close_after=2)
    join(m, "c1", "c2", "c3", "c4")
    assert not any(isinstance(a, p.RoundClosed) for a in m.handle(update("c3", 1, 1.0)))
    m.handle(p.ClientFailed(wire.Error(1, "c1", wire.E_TRAINING_FAILED, "oom")))
    closed = only(m.handle(update("c2", 1, 3.0)), p.RoundClosed)
    assert {cid: o.status for cid, o in closed.outcomes.items()} == {
        "c1": ClientStatus.FAILED, "c2": ClientStatus.UPDATED, "c3": ClientStatus.UPDATED,
        "c4": ClientStatus.LATE}
    assert torch.equal(closed.global_state["a"], torch.full((2, 3), 2.0))
    late = m.handle(update("c4", 1, 100.0))
    assert sends(late, wire.Error)["c4"].code == wire.E_LATE_UPDATE
    assert not any(isinstance(a, p.RoundClosed) for a in late)
    assert torch.equal(m.global_state["a"], torch.full((2, 3), 2.0))


def test_without_over_selection_a_round_waits_for_every_sampled_client() -> None:
    m = machine(rounds=1, per_round=3)
    join(m, "c1", "c2", "c3")
    m.handle(update("c1", 1, 1.0))
    assert not any(isinstance(a, p.RoundClosed) for a in m.handle(update("c2", 1, 1.0)))
    assert only(m.handle(update("c3", 1, 1.0)), p.RoundClosed).outcomes["c3"].status == "updated"


def test_too_few_updates_retry_the_round_then_abort() -> None:
    m = machine(rounds=1, per_round=2, min_updates=2, max_attempts=2)
    join(m, "c1", "c2")
    m.handle(update("c1", 1, 1.0))
    retry = m.handle(p.ClientFailed(wire.Error(1, "c2", wire.E_TRAINING_FAILED, "oom")))
    failed = only(retry, p.RoundFailed)
    assert failed.outcomes["c2"] == ClientOutcome(ClientStatus.FAILED, code=wire.E_TRAINING_FAILED,
                                                 reason="oom")
    assert set(sends(retry, wire.Task)) == {"c1", "c2"}
    assert only(retry, p.StartTimer) == p.StartTimer(1, 2, 120.0)
    m.handle(p.ClientLeft("c2"))
    aborted = m.handle(p.DeadlinePassed(1, 2))
    assert isinstance(aborted[-1], p.RunAborted)
    assert set(sends(aborted, wire.Bye)) == {"c1"}
    assert sends(aborted, wire.Error)["c1"].code == wire.E_ABORTED  # so it does not say "done"
    assert phase(m) is p.Phase.ABORTED
    assert torch.equal(m.global_state["a"], GLOBAL["a"])


def test_retry_waits_when_too_few_clients_remain() -> None:
    m = machine(rounds=1, per_round=2, min_updates=2)
    join(m, "c1", "c2")
    m.handle(update("c1", 1, 1.0))
    retry = m.handle(p.ClientLeft("c2"))
    only(retry, p.RoundFailed)
    assert not sends(retry, wire.Task)
    assert phase(m) is p.Phase.WAITING
    assert set(sends(join(m, "c3"), wire.Task)) == {"c1", "c3"}


def test_update_change_is_norm_clipped() -> None:
    m = machine(rounds=1, per_round=1, clip=p.ClipMode.ABSOLUTE, clip_norm=1.0)
    join(m, "c1")
    actions = m.handle(update("c1", 1, 3.0))
    ack = sends(actions, wire.Ack)["c1"]
    closed = only(actions, p.RoundClosed)
    delta = {n: state(3.0)[n] - GLOBAL[n] for n in GLOBAL}
    norm = math.sqrt(sum(float(d.double().square().sum()) for d in delta.values()))
    assert ack.detail == {"clipped": True, "update_norm": pytest.approx(norm)}
    clipped_norm = math.sqrt(sum(float((closed.global_state[n] - GLOBAL[n]).double().square()
                                       .sum()) for n in GLOBAL))
    assert clipped_norm == pytest.approx(1.0, rel=1e-6)
    assert closed.outcomes["c1"].clipped


@pytest.mark.parametrize("encoding", ["fp16", "int8"])
def test_compressed_encodings_are_accepted(encoding: str) -> None:
    m = machine(rounds=1, per_round=1)
    join(m, "c1")
    payload = encode_tensors(state(0.5), encoding)
    closed = only(m.handle(p.UpdateReceived(wire.Update(1, "c1", payload, 1))), p.RoundClosed)
    assert torch.allclose(closed.global_state["a"], torch.full((2, 3), 0.5), atol=1e-2)


def test_resumed_machine_starts_at_the_next_round_and_a_finished_one_says_bye() -> None:
    strategy = FedAvg(1, 0, settings_for)
    resumed = p.RoundMachine(strategy, state(7.0), p.RoundRules(), rounds=3, first_round=3)
    tasks = sends(join(resumed, "c1"), wire.Task)
    assert tasks["c1"].round == 3
    done = p.RoundMachine(strategy, GLOBAL, p.RoundRules(), rounds=3, first_round=4)
    actions = join(done, "c1")
    assert set(sends(actions, wire.Bye)) == {"c1"}
    assert phase(done) is p.Phase.FINISHED


def test_failures_from_old_rounds_other_reports_and_unknown_leavers_change_nothing() -> None:
    m = machine(rounds=2, per_round=1)
    join(m, "c1")
    assert m.handle(p.ClientFailed(wire.Error(7, "c1", wire.E_TRAINING_FAILED, ""))) == []
    assert m.handle(p.ClientFailed(wire.Error(1, "c1", wire.E_BAD_FRAME, "junk"))) == []
    assert m.handle(p.ClientLeft("ghost")) == []
    assert phase(m) is p.Phase.TRAINING


def test_recording_a_round_that_is_not_evaluating_is_a_bug() -> None:
    with pytest.raises(ValueError, match="recorded"):
        machine().handle(p.RoundRecorded(1))


@pytest.mark.parametrize(
    "rules",
    [{"min_updates": 0}, {"deadline_s": 0.0}, {"clip_norm": -1.0}, {"max_attempts": 0},
     {"clip_norm": 1.0}, {"clip": p.ClipMode.ABSOLUTE}, {"norm_multiplier": 0.9},
     {"trim_fraction": 0.5}, {"max_accuracy_drop": -0.1}, {"max_accuracy_drop": 1.5},
     {"update_encoding": "bf16"}, {"task_encoding": "zip"}, {"min_clients": -1},
     {"close_after": 1, "min_updates": 2}, {"close_after": -1, "min_updates": 1}],
)
def test_rules_reject_bad_values(rules: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=r"server\.round"):
        p.RoundRules(**rules)


def test_machine_refuses_an_empty_state() -> None:
    with pytest.raises(ConfigError, match="empty"):
        p.RoundMachine(FedAvg(1, 0, settings_for), {}, p.RoundRules(), 1)


VALID_PAYLOAD = encode_tensors(state(0.25))


@given(st.one_of(
    st.binary(max_size=400),
    st.builds(lambda edits: bytes(_edit(VALID_PAYLOAD, edits)),
              st.lists(st.tuples(st.integers(0, len(VALID_PAYLOAD) - 1), st.integers(0, 255)),
                       min_size=1, max_size=6)),
))
@settings(max_examples=300, deadline=None)
def test_fuzzed_update_payloads_get_an_ack_or_an_error_never_an_exception(payload: bytes) -> None:
    m = machine(rounds=1, per_round=2)
    join(m, "c1", "c2")
    actions = m.handle(p.UpdateReceived(wire.Update(1, "c1", payload, 3)))
    replies = {type(a.message) for a in actions if isinstance(a, p.Send)}
    assert replies in ({wire.Ack}, {wire.Error})
    only(m.handle(update("c2", 1, 1.0)), p.RoundClosed)


def _edit(data: bytes, edits: list[tuple[int, int]]) -> bytearray:
    out = bytearray(data)
    for position, value in edits:
        out[position] = value
    return out


def test_adaptive_clipping_bounds_updates_by_the_last_median_norm() -> None:
    m = machine(rounds=2, per_round=3, norm_multiplier=2.0)
    join(m, "c1", "c2", "c3")
    assert m.clip_bound() is None  # nothing to adapt to yet
    for cid, value in (("c1", 1.0), ("c2", 2.0), ("c3", 3.0)):
        m.handle(update(cid, 1, value))
    norms = [math.sqrt(6 * v**2 + 4 * (v - 1) ** 2) for v in (1.0, 2.0, 3.0)]
    assert m.clip_bound() == pytest.approx(2.0 * norms[1])
    m.handle(p.RoundRecorded(1))
    base = m.global_state
    actions = m.handle(update("c1", 2, 100.0))
    assert sends(actions, wire.Ack)["c1"].detail["clipped"] is True
    m.handle(update("c2", 2, 2.0))
    closed = only(m.handle(update("c3", 2, 2.0)), p.RoundClosed)
    assert not closed.refused and closed.outcomes["c1"].clipped
    step = math.sqrt(sum(float((closed.global_state[n] - base[n]).double().square().sum())
                         for n in GLOBAL))
    assert step < 2.0 * norms[1]


def test_a_resumed_machine_clips_with_the_recorded_median_norm() -> None:
    rules = p.RoundRules(norm_multiplier=2.0)
    m = p.RoundMachine(FedAvg(1, 0, settings_for), GLOBAL, rules, rounds=3, first_round=2,
                       median_norm=p.median_norm([1.0, 0.5, 4.0]))
    assert m.clip_bound() == 2.0
    join(m, "c1")
    closed = only(m.handle(update("c1", 2, 10.0)), p.RoundClosed)
    assert closed.outcomes["c1"].clipped and not closed.refused
    assert p.median_norm([]) is None
    stuck = p.RoundMachine(FedAvg(1, 0, settings_for), GLOBAL, rules, rounds=3, first_round=2,
                           median_norm=0.0)
    assert stuck.clip_bound() is None  # a zero median must not freeze the model


def test_the_guard_keeps_the_last_good_state_and_names_the_outlier() -> None:
    m = machine(rounds=2, per_round=3)
    join(m, "c1", "c2", "c3")
    m.handle(update("c1", 1, 1.0))
    m.handle(update("c2", 1, 1.5))
    closed = only(m.handle(update("c3", 1, 3e38)), p.RoundClosed)
    assert "exceeds the bound" in closed.refused
    assert all(torch.equal(closed.global_state[n], GLOBAL[n]) for n in GLOBAL)
    assert closed.outcomes["c3"].status is ClientStatus.DISCARDED
    assert "update norm" in closed.outcomes["c3"].reason
    assert closed.outcomes["c1"].reason == "the round's aggregate was refused"
    assert closed.train_metrics == {}


def test_with_clipping_off_only_a_non_finite_aggregate_is_refused() -> None:
    m = machine(rounds=1, per_round=2, clip=p.ClipMode.OFF)
    join(m, "c1", "c2")
    m.handle(update("c1", 1, 1.0))
    closed = only(m.handle(update("c2", 1, 3e38)), p.RoundClosed)
    assert not closed.refused and not closed.outcomes["c2"].clipped
    assert float(closed.global_state["a"].max()) > 1e38


@pytest.mark.parametrize(("aggregation", "expected"),
                         [(Aggregation.FEDAVG, (1 + 2 + 30) / 3), (Aggregation.MEDIAN, 2.0),
                          (Aggregation.NORM_FILTER, 1.5)])
def test_the_rules_pick_the_aggregation(aggregation: Aggregation, expected: float) -> None:
    m = machine(rounds=1, per_round=3, clip=p.ClipMode.OFF, aggregation=aggregation)
    join(m, "c1", "c2", "c3")
    m.handle(update("c1", 1, 1.0))
    m.handle(update("c2", 1, 2.0))
    closed = only(m.handle(update("c3", 1, 30.0)), p.RoundClosed)
    assert torch.allclose(closed.global_state["a"], torch.full((2, 3), expected))


def guarded(rounds: int = 3, drop: float = 0.1, reference: float | None = 0.8) -> p.RoundMachine:
    """A one-client machine whose accuracy guard allows ``drop``; ``reference`` is the initial
    state's accuracy."""
    return p.RoundMachine(FedAvg(1, 0, settings_for), GLOBAL,
                          p.RoundRules(clip=p.ClipMode.OFF, max_accuracy_drop=drop), rounds,
                          reference_metrics=None if reference is None else {"accuracy": reference})


def evaluated(m: p.RoundMachine, round_number: int, accuracy: float) -> p.RoundCommitted:
    verdict: p.RoundCommitted = only(
        m.handle(p.RoundEvaluated(round_number, {"accuracy": accuracy})), p.RoundCommitted)
    return verdict


def test_the_accuracy_guard_refuses_a_state_whose_accuracy_collapses() -> None:
    m = guarded(drop=0.1, reference=0.8)
    join(m, "c1")
    closed = only(m.handle(update("c1", 1, 0.5, train_loss=1.0)), p.RoundClosed)
    assert torch.equal(closed.global_state["a"], torch.full((2, 3), 0.5))  # proposed
    assert torch.equal(m.global_state["a"], GLOBAL["a"])  # not committed yet
    with pytest.raises(ValueError, match="RoundEvaluated"):
        m.handle(p.RoundRecorded(1))
    verdict = evaluated(m, 1, 0.65)
    assert "0.65 is 0.15 below the last committed state's 0.8" in verdict.refused
    assert all(torch.equal(verdict.global_state[n], GLOBAL[n]) for n in GLOBAL)
    assert verdict.eval_metrics == {"accuracy": 0.8}  # the kept state's
    assert verdict.outcomes["c1"].status is ClientStatus.DISCARDED
    assert verdict.outcomes["c1"].reason == "the round's aggregate was refused"
    assert verdict.train_metrics == {}
    # The next round starts from the kept state; a smaller drop is committed.
    task = sends(m.handle(p.RoundRecorded(1)), wire.Task)["c1"]
    assert task.tensors == encode_tensors(GLOBAL)
    only(m.handle(update("c1", 2, 0.25)), p.RoundClosed)
    verdict = evaluated(m, 2, 0.75)
    assert not verdict.refused and verdict.eval_metrics == {"accuracy": 0.75}
    assert torch.equal(m.global_state["a"], torch.full((2, 3), 0.25))
    assert verdict.outcomes["c1"].status is ClientStatus.UPDATED


def test_the_accuracy_guard_compares_with_the_last_committed_state() -> None:
    m = guarded(rounds=3, drop=0.1, reference=None)
    join(m, "c1")
    only(m.handle(update("c1", 1, 1.0)), p.RoundClosed)
    assert not evaluated(m, 1, 0.3).refused  # no reference yet: committed as it is
    m.handle(p.RoundRecorded(1))
    only(m.handle(update("c1", 2, 2.0)), p.RoundClosed)
    assert not evaluated(m, 2, 0.9).refused  # gains are always committed
    m.handle(p.RoundRecorded(2))
    only(m.handle(update("c1", 3, 3.0)), p.RoundClosed)
    assert "below the last committed state's 0.9" in evaluated(m, 3, 0.7).refused
    end = m.handle(p.RoundRecorded(3))
    final = only(end, p.RunFinished)
    assert torch.equal(final.global_state["a"], torch.full((2, 3), 2.0))


def test_the_accuracy_guard_needs_an_accuracy_and_is_off_by_default() -> None:
    m = guarded()
    join(m, "c1")
    only(m.handle(update("c1", 1, 1.0)), p.RoundClosed)
    with pytest.raises(ConfigError, match="max_accuracy_drop needs"):
        m.handle(p.RoundEvaluated(1, {"mean": 1.0}))
    plain = machine(rounds=1, per_round=1, clip=p.ClipMode.OFF)
    assert not p.RoundRules().guards_accuracy
    join(plain, "c1")
    only(plain.handle(update("c1", 1, 1.0)), p.RoundClosed)
    verdict = only(plain.handle(p.RoundEvaluated(1, {"accuracy": 0.0})), p.RoundCommitted)
    assert not verdict.refused and torch.equal(plain.global_state["a"], torch.ones(2, 3))
    with pytest.raises(ValueError, match="evaluated"):
        plain.handle(p.RoundEvaluated(1, {"accuracy": 0.0}))
