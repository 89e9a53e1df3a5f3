"""The in-process driver (``lpfl.rounds.drive``): the server's round machine without sockets, as
``lpfl simulate`` and the robustness benchmark run it; the accuracy guard on the toy task."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from lpfl import cli, wire
from lpfl.client_round import LocalClient
from lpfl.config import RunConfig
from lpfl.data import FederatedData
from lpfl.model.adapters import load_trainable_state, trainable_state
from lpfl.protocol import ClientRefused, ClipMode, RoundRules
from lpfl.records import ClientStatus
from lpfl.rounds import DrivenRound, RunAborted, TaskOutcome, drive
from lpfl.simulate import (
    Evaluator,
    federate,
    federated_data,
    fresh_prompt_model,
    method_strategy,
)
from lpfl.strategy import ClientUpdate
from lpfl.trainer_api import Trainer
from tests import fake_federation as ff
from tests.conftest import tiny_config

IDS = ["c-1", "c-2", "c-3"]


def test_every_client_is_connected_before_the_first_round_is_sampled() -> None:
    few = ff.reference_state(IDS, rounds=2, clients_per_round=2, min_clients=1)
    all_ = ff.reference_state(IDS, rounds=2, clients_per_round=2, min_clients=3)
    for name, tensor in all_.items():
        assert torch.equal(few[name], tensor)


def test_rounds_see_the_replies_bytes_and_the_machines_verdict() -> None:
    seen: list[DrivenRound] = []
    trainers: dict[str, Trainer] = {cid: ff.FakeTrainer(cid) for cid in IDS}
    final = drive(ff.strategy(2), ff.initial_state(), RoundRules(update_encoding="fp16"), 2,
                  trainers, ff.evaluate, seen.append)
    assert [r.committed.round for r in seen] == [1, 2]
    first = seen[0]
    assert set(first.traffic) == set(first.committed.outcomes)
    traffic = first.record().traffic
    assert traffic.payload_downlink_bytes > traffic.payload_uplink_bytes > 0  # fp32 down, fp16 up
    assert traffic.wire_uplink_bytes == traffic.wire_downlink_bytes == 0
    assert first.committed.eval_metrics == ff.evaluate(1, first.committed.global_state)
    for name, tensor in seen[-1].committed.global_state.items():
        assert torch.equal(final[name], tensor)


@dataclass
class NaNTrainer(ff.FakeTrainer):
    def train_round(self, round_number: int, global_state: dict[str, torch.Tensor],
                    settings: dict[str, Any]) -> ClientUpdate:
        return ClientUpdate(self.client_id, {k: v * float("nan") for k, v in
                                             global_state.items()}, 1)


def test_a_run_whose_updates_are_all_refused_aborts() -> None:
    trainers: dict[str, Trainer] = {cid: NaNTrainer(cid) for cid in IDS}
    with pytest.raises(RunAborted, match="fewer than min_updates"):
        drive(ff.strategy(3), ff.initial_state(), RoundRules(max_attempts=2), 2, trainers,
              ff.evaluate)


@dataclass
class RecordingFleet:
    """In-process trainers behind a transport that loses ``lost``'s replies: a Fleet that
    records the batches of tasks it is given."""

    lost: str
    batches: list[list[str]] = dataclasses.field(default_factory=list)

    def members(self) -> Mapping[str, Mapping[str, Any]]:
        return {cid: ff.FakeTrainer(cid).capabilities() for cid in IDS}

    def train(self, round_number: int, tasks: Mapping[str, Mapping[str, Any]],
              state: Mapping[str, torch.Tensor]) -> list[tuple[str, TaskOutcome]]:
        self.batches.append(list(tasks))
        return [(cid, ClientRefused(cid, wire.E_TIMEOUT, "no reply") if cid == self.lost
                 else ff.FakeTrainer(cid).train_round(round_number, dict(state), dict(settings)))
                for cid, settings in tasks.items()]


def test_a_fleet_gets_each_rounds_tasks_together_and_its_errors_are_failed_replies() -> None:
    fleet = RecordingFleet(lost="c-2")
    seen: list[DrivenRound] = []
    final = drive(ff.strategy(3), ff.initial_state(), RoundRules(min_updates=2), 2, fleet,
                  ff.evaluate, seen.append)
    assert fleet.batches == [IDS, IDS]  # one batch per round, in task order
    for driven in seen:
        lost = driven.committed.outcomes["c-2"]
        assert (lost.status, lost.code) == (ClientStatus.REJECTED, wire.E_TIMEOUT)
        assert set(driven.traffic) == {"c-1", "c-3"}
    everyone = drive(ff.strategy(3), ff.initial_state(), RoundRules(min_updates=2), 2,
                     RecordingFleet(lost=""), ff.evaluate)
    assert any(not torch.equal(final[k], v) for k, v in everyone.items())  # c-2 left out


# The accuracy guard on the toy task: one client trains on flipped labels and claims a huge
# number of examples. Its update is no larger than an honest one (nothing is clipped), but
# FedAvg follows it and accuracy collapses.


def toy_config(toy_csv: Path) -> RunConfig:
    return tiny_config(
        str(toy_csv),
        data={"test_size": 100, "shots_per_class": 12, "unlabeled_per_client": 8,
              "num_clients": 3},
        federation={"rounds": 3, "clients_per_round": 3, "local_steps": 6, "batch_size": 8,
                    "lr": 5e-3},
        lora={"r": 4, "target_modules": ["q_proj", "v_proj", "o_proj"]},
        run={"methods": ["lp-fl-no-soft"]})


@dataclass
class LabelFlipper:
    """Honest except in ``attack_round``, when it trains on flipped labels and claims
    a billion examples."""

    honest: LocalClient
    flipped: LocalClient
    attack_round: int

    def capabilities(self) -> dict[str, Any]:
        return self.honest.capabilities()

    def train_round(self, round_number: int, global_state: dict[str, torch.Tensor],
                    settings: dict[str, Any]) -> ClientUpdate:
        if round_number != self.attack_round:
            return self.honest.train_round(round_number, global_state, settings)
        update = self.flipped.train_round(round_number, global_state, settings)
        return dataclasses.replace(update, num_examples=10**9)


def attacked_run(config: RunConfig, data: FederatedData, drop: float) -> list[DrivenRound]:
    pm = fresh_prompt_model(config, "lora", 0)
    honest = [LocalClient(f"client-{i}", i, pm, labeled, unlabeled, 64)
              for i, (labeled, unlabeled) in enumerate(zip(data.labeled, data.unlabeled,
                                                           strict=True))]
    flipped = [dataclasses.replace(e, label=1 - e.label) for e in data.labeled[0]]
    clients: dict[str, Trainer] = {c.client_id: c for c in honest}
    clients["client-0"] = LabelFlipper(honest[0], LocalClient("client-0", 0, pm, flipped, []), 2)
    evaluator = Evaluator(data, 64)

    def evaluate(round_number: int, state: Mapping[str, torch.Tensor]) -> dict[str, float]:
        load_trainable_state(pm, state)
        return {"accuracy": evaluator(pm)}

    seen: list[DrivenRound] = []
    drive(method_strategy(config, "lp-fl-no-soft", 0), trainable_state(pm),
          RoundRules(max_accuracy_drop=drop), 3, clients, evaluate, seen.append)
    return seen


def test_the_accuracy_guard_refuses_a_small_update_that_ruins_accuracy(toy_csv: Path) -> None:
    config = toy_config(toy_csv)
    data = federated_data(config, 0)
    unguarded = [r.committed for r in attacked_run(config, data, drop=1.0)]
    guarded = [r.committed for r in attacked_run(config, data, drop=0.1)]
    before = unguarded[0].eval_metrics["accuracy"]
    assert guarded[0].eval_metrics["accuracy"] == before >= 0.8
    # Without the guard the poisoned round is committed and accuracy collapses.
    assert unguarded[1].eval_metrics["accuracy"] < before - 0.3 and not unguarded[1].refused
    assert not any(o.clipped for o in unguarded[1].outcomes.values())
    # With it, the round is refused and the last good state (and its accuracy) kept ...
    assert "below the last committed state's" in guarded[1].refused
    assert guarded[1].eval_metrics["accuracy"] == before
    assert {str(o.status) for o in guarded[1].outcomes.values()} == {"discarded"}
    # ... and the federation goes on learning from there.
    assert not guarded[2].refused and guarded[2].eval_metrics["accuracy"] >= before


def test_the_simulation_applies_the_rules(toy_csv: Path) -> None:
    base = toy_config(toy_csv)
    config = dataclasses.replace(base, run=dataclasses.replace(base.run, eval_every=0))
    data = federated_data(config, 0)
    plain = RoundRules(clip=ClipMode.OFF)
    run, _ = federate(config, "lp-fl-no-soft", 0, data, lambda _: None, plain)
    assert [r["accuracy"] is None for r in run["rounds"]] == [True, True, False]
    assert run["clip"] == "off" and all(r["refused"] == "" for r in run["rounds"])
    # The accuracy guard evaluates every round; an absolute bound below every update's norm
    # clips them all.
    guarded = RoundRules(clip=ClipMode.ABSOLUTE, clip_norm=1e-3, max_accuracy_drop=0.5)
    run, _ = federate(config, "lp-fl-no-soft", 0, data, lambda _: None, guarded)
    assert all(r["accuracy"] is not None for r in run["rounds"])
    assert all(r["clipped"] == r["clients"] for r in run["rounds"])
    central, _ = federate(config, "centralized-no-soft", 0, data, lambda _: None, guarded)
    assert central["clip"] == "off" and central["rounds"][0]["clipped"] == []


def test_lpfl_simulate_takes_the_round_rules_from_the_run_file(toy_csv: Path,
                                                               tmp_path: Path) -> None:
    run_file = tmp_path / "run.toml"
    run_file.write_text(
        f'[model]\nsource = "tiny-llama"\nmax_length = 48\n'
        f'[data]\ndataset = "{toy_csv}"\ntest_size = 50\nvalidation_size = 0\n'
        f"shots_per_class = 8\nunlabeled_per_client = 4\nnum_clients = 2\n"
        f"[federation]\nrounds = 1\nclients_per_round = 2\nlocal_steps = 2\nbatch_size = 4\n"
        f'[run]\nmethods = ["lp-fl-no-soft"]\n'
        f'[server.round]\nclip = "absolute"\nclip-norm = 1e-4\naggregation = "median"\n')
    assert cli.main(["simulate", "--config", str(run_file), "--out", str(tmp_path / "out")]) == 0
    (run,) = json.loads((tmp_path / "out" / "results.json").read_text())["runs"]
    assert (run["clip"], run["aggregation"]) == ("absolute", "median")
    assert run["rounds"][0]["clipped"] == ["client-0", "client-1"]
