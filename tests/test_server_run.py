"""Whole runs of the aggregator and edge clients in one event loop, with the fake trainer."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from lpfl import wire
from lpfl.edge_client.connection import EdgeClient
from lpfl.errors import ConfigError
from lpfl.records import RoundRecord
from lpfl.results import read_document
from lpfl.server.app import AggregatorServer, RunOutcome
from lpfl.server.checkpoint import load_checkpoint
from lpfl.strategy import ClientUpdate
from lpfl.tokens import make_tokens
from tests import fake_federation as ff

IDS = ["c-1", "c-2", "c-3"]


def test_run_matches_in_process_fedavg_and_records_every_round(tmp_path: Path) -> None:
    run = asyncio.run(ff.run_in_process(tmp_path, IDS, rounds=3, clients_per_round=2,
                                        min_clients=3))
    assert run.outcome.completed
    expected = ff.reference_state(IDS, rounds=3, clients_per_round=2)
    for name, tensor in expected.items():
        torch.testing.assert_close(run.outcome.global_state[name], tensor)
    assert run.client_rounds == {"c-1": 1, "c-2": 3, "c-3": 2}  # who FedAvg sampled when

    checkpoint = load_checkpoint(tmp_path / "checkpoint.safetensors")
    assert checkpoint.round == 3
    for name, tensor in expected.items():
        torch.testing.assert_close(checkpoint.global_state[name], tensor)
    records = read_document(tmp_path / "results.json")["runs"][0]["records"]
    assert [r["round"] for r in records] == [1, 2, 3]
    assert [r.round for r in checkpoint.rounds] == [1, 2, 3]
    # Default clipping acts on these clients, and the in-process reference clipped alike.
    assert any(c.outcome.clipped for r in checkpoint.rounds for c in r.clients)
    for document in records:
        record = RoundRecord.from_dict(document)
        assert record.to_dict() == document
        assert set(record.eval_metrics) == {"mean"}
        updated = [c for c in record.clients if c.outcome.status == "updated"]
        assert len(updated) == 2
        for c in updated:
            assert c.outcome.num_examples == 10 + ff.client_index(c.client_id)
            assert c.traffic.wire_uplink_bytes > c.traffic.payload_uplink_bytes > 0
            assert c.traffic.wire_downlink_bytes > c.traffic.payload_downlink_bytes > 0
        assert document["wire_uplink_bytes"] == sum(c.traffic.wire_uplink_bytes
                                                    for c in record.clients)


def test_wire_bytes_per_client_add_up_to_what_the_client_counted(tmp_path: Path) -> None:
    async def scenario() -> tuple[ff.InProcessRun, dict[str, EdgeClient]]:
        tokens = make_tokens(IDS[:2])
        server = ff.make_server(tmp_path, tokens, rounds=2, clients_per_round=2)
        serving = asyncio.create_task(server.run())
        await server.started.wait()
        clients = {cid: ff.client(server, cid, tokens[cid]) for cid in tokens}
        rounds = await asyncio.gather(*(c.run() for c in clients.values()))
        outcome = await serving
        return ff.InProcessRun(server, outcome, dict(zip(clients, rounds, strict=True))), clients

    run, clients = asyncio.run(scenario())
    for cid, edge in clients.items():
        rows = [c for r in run.outcome.rounds for c in r.clients if c.client_id == cid]
        up = sum(c.traffic.wire_uplink_bytes for c in rows)
        down = sum(c.traffic.wire_downlink_bytes for c in rows)
        # Only the bye and the closing handshake come after the last round closed.
        assert 0 <= edge.wire_bytes_out - up <= 64
        assert 0 <= edge.wire_bytes_in - down <= 400
        assert up > sum(c.traffic.payload_uplink_bytes for c in rows) > 0


def test_lora_sized_update_has_under_two_percent_wire_overhead(tmp_path: Path) -> None:
    """An fp16 update of SmolLM2's LoRA size (460,800 parameters) in chunked frames."""
    lora = {f"layer{i}.lora_A": torch.zeros(8, 576) for i in range(50)}
    lora.update({f"layer{i}.lora_B": torch.zeros(576, 8) for i in range(50)})
    assert sum(t.numel() for t in lora.values()) == 460_800

    run = asyncio.run(ff.run_in_process(tmp_path, ["c-1"], rounds=2, clients_per_round=1,
                                        initial=lora, update_encoding="fp16"))
    assert run.outcome.completed and len(run.outcome.rounds) == 2
    for record in run.outcome.rounds:
        (row,) = record.clients
        assert row.traffic.payload_uplink_bytes > 900_000
        overhead = row.traffic.wire_uplink_bytes / row.traffic.payload_uplink_bytes - 1
        assert 0 < overhead < 0.02, overhead
        assert row.traffic.wire_downlink_bytes / row.traffic.payload_downlink_bytes - 1 < 0.02


def test_trainer_failure_becomes_an_error_and_the_round_goes_on(tmp_path: Path) -> None:
    trainers = {"c-3": ff.FakeTrainer("c-3", fail_rounds=frozenset({1}))}
    run = asyncio.run(ff.run_in_process(tmp_path, IDS, rounds=2, clients_per_round=3,
                                        trainers=trainers))
    assert run.outcome.completed
    first = {c.client_id: c for c in run.outcome.rounds[0].clients}
    assert first["c-3"].outcome.status == "failed"
    assert first["c-3"].outcome.code == wire.E_TRAINING_FAILED
    assert {c.outcome.status for c in run.outcome.rounds[1].clients} == {"updated"}
    assert run.client_rounds == {"c-1": 2, "c-2": 2, "c-3": 1}


def test_an_existing_checkpoint_is_not_overwritten_without_resume(tmp_path: Path) -> None:
    asyncio.run(ff.run_in_process(tmp_path, ["c-1"], rounds=1, clients_per_round=1))

    async def fresh() -> None:
        ff.make_server(tmp_path, make_tokens(["c-1"]), rounds=1, clients_per_round=1)

    with pytest.raises(ConfigError, match="--resume"):
        asyncio.run(fresh())


def test_resuming_a_finished_run_returns_at_once(tmp_path: Path) -> None:
    first = asyncio.run(ff.run_in_process(tmp_path, ["c-1"], rounds=2, clients_per_round=1))

    async def resume() -> RunOutcome:
        server = ff.make_server(tmp_path, make_tokens(["c-1"]), rounds=2, clients_per_round=1,
                                resume=True)
        return await server.run()

    outcome = asyncio.run(resume())
    assert outcome.completed
    assert [r.round for r in outcome.rounds] == [1, 2]
    for name, tensor in first.outcome.global_state.items():
        torch.testing.assert_close(outcome.global_state[name], tensor)


@dataclass
class PoisonTrainer(ff.FakeTrainer):
    """An authenticated client that answers every task with finite values near float32's max."""

    def train_round(self, round_number: int, global_state: dict[str, torch.Tensor],
                    settings: dict[str, Any]) -> ClientUpdate:
        self.rounds.append(round_number)
        return ClientUpdate(self.client_id,
                            {k: torch.full_like(v, 3e38) for k, v in global_state.items()}, 10)


def test_one_poisoning_client_cannot_break_the_model_with_default_settings(
    tmp_path: Path,
) -> None:
    ids = [*IDS, "c-9"]
    honest = {cid: ff.FakeTrainer(cid) for cid in IDS}
    trainers = {**honest, "c-9": PoisonTrainer("c-9")}
    run = asyncio.run(ff.run_in_process(tmp_path, ids, rounds=3, clients_per_round=4,
                                        trainers=trainers))
    assert run.outcome.completed
    for tensor in run.outcome.global_state.values():
        assert bool(torch.isfinite(tensor).all()) and float(tensor.abs().max()) < 4.0
    assert all(trainer.rounds == [1, 2, 3] for trainer in honest.values())
    first, *later = run.outcome.rounds
    # No bound is known in the first round: the guard refuses its aggregate and names the client.
    assert "exceeds the bound" in first.refused
    assert first.eval_metrics == {"mean": 0.0}  # the initial state, kept
    statuses = {c.client_id: (c.outcome.status, c.outcome.reason) for c in first.clients}
    assert statuses["c-9"][0] == "discarded" and "update norm" in statuses["c-9"][1]
    # Then the first round's median norm bounds every update: the poison is clipped, the honest
    # clients' updates count, and the model moves toward them.
    for record in later:
        assert not record.refused
        rows = {c.client_id: c for c in record.clients}
        assert rows["c-9"].outcome.status == "updated" and rows["c-9"].outcome.clipped
        assert all(rows[cid].outcome.status == "updated" for cid in IDS)
    results = read_document(tmp_path / "results.json")["runs"][0]["records"]
    assert results[0]["refused"] == first.refused
    assert [c["status"] for c in results[0]["clients"] if c["client_id"] == "c-9"] == [
        "discarded"]


@dataclass
class SaboteurTrainer(ff.FakeTrainer):
    """In ``attack_rounds``, a change far smaller than an honest one (nothing to clip) that
    claims a huge number of examples, so FedAvg follows it and :func:`sign_accuracy` collapses;
    an honest client otherwise."""

    attack_rounds: frozenset[int] = frozenset({1})

    def train_round(self, round_number: int, global_state: dict[str, torch.Tensor],
                    settings: dict[str, Any]) -> ClientUpdate:
        if round_number not in self.attack_rounds:
            return super().train_round(round_number, global_state, settings)
        self.rounds.append(round_number)
        return ClientUpdate(self.client_id,
                            {k: v - 0.01 for k, v in global_state.items()}, 10**9)


def sign_accuracy(round_number: int, state: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """The fake world's accuracy: the share of values that are not negative."""
    values = torch.cat([t.flatten() for t in state.values()])
    return {"accuracy": float((values >= 0).float().mean())}


def test_the_accuracy_guard_keeps_the_last_good_state_when_a_small_update_ruins_it(
    tmp_path: Path,
) -> None:
    ids = [*IDS, "c-9"]
    trainers = {**{cid: ff.FakeTrainer(cid) for cid in IDS}, "c-9": SaboteurTrainer("c-9")}
    run = asyncio.run(ff.run_in_process(tmp_path, ids, rounds=3, clients_per_round=4,
                                        trainers=trainers, evaluation=sign_accuracy,
                                        max_accuracy_drop=0.1))
    assert run.outcome.completed
    first, *later = run.outcome.rounds
    # Round 1's aggregate is close to the initial zeros (no norm bound is broken), but every
    # value is negative: accuracy 0 against the initial state's 1.
    assert "its accuracy 0 is 1 below the last committed state's 1" in first.refused
    assert first.eval_metrics == {"accuracy": 1.0}  # the kept initial state's
    rows = {c.client_id: c for c in first.clients}
    assert not rows["c-9"].outcome.clipped and rows["c-9"].outcome.update_norm < 0.1
    assert {c.outcome.status for c in first.clients} == {"discarded"}
    assert all(not r.refused and r.eval_metrics == {"accuracy": 1.0} for r in later)
    assert float(min(t.min() for t in run.outcome.global_state.values())) > 0
    checkpoint = load_checkpoint(tmp_path / "checkpoint.safetensors")
    for name, tensor in run.outcome.global_state.items():
        torch.testing.assert_close(checkpoint.global_state[name], tensor)
    results = read_document(tmp_path / "results.json")["runs"][0]["records"]
    assert results[0]["refused"] == first.refused
    assert results[0]["clients"][-1]["reason"] == "the round's aggregate was refused"


def test_the_accuracy_guards_reference_is_the_initial_state_then_the_recorded_one(
    tmp_path: Path,
) -> None:
    evaluated: list[int] = []

    def counting(round_number: int, state: Mapping[str, torch.Tensor]) -> dict[str, float]:
        evaluated.append(round_number)
        return {**sign_accuracy(round_number, state), "round": float(round_number)}

    asyncio.run(ff.run_in_process(tmp_path, ["c-1"], rounds=1, clients_per_round=1,
                                  evaluation=counting, max_accuracy_drop=0.1))
    assert evaluated == [0, 1]  # the initial state before the first round

    async def resume() -> AggregatorServer:
        return ff.make_server(tmp_path, make_tokens(["c-1"]), rounds=2, clients_per_round=1,
                              resume=True, evaluation=counting, max_accuracy_drop=0.1)

    server = asyncio.run(resume())
    assert evaluated == [0, 1]  # a resumed server reads the last recorded evaluation
    assert server.machine.committed_metrics == {"accuracy": 1.0, "round": 1.0}
