"""Secure aggregation and differential privacy over the websocket server, with fake clients."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from lpfl import wire
from lpfl.privacy import Accountant, DpRound, PrivacyRules
from lpfl.protocol import ClientFailed, ClipMode, RoundRules
from lpfl.records import ClientStatus
from lpfl.results import read_records
from lpfl.rounds import TaskOutcome, drive
from lpfl.secagg import scale_bits
from lpfl.server.app import RunOutcome
from lpfl.tokens import make_tokens
from tests import fake_federation as ff

IDS = ["c-1", "c-2", "c-3"]
PLAIN: dict[str, Any] = {"clip": ClipMode.ABSOLUTE, "clip_norm": 50.0, "min_updates": 2}
MASKED: dict[str, Any] = PLAIN | {
    "privacy": PrivacyRules(secure_aggregation=True, clip_range=4.0, max_weight=100)}


class FailingInRound2:
    """The fake clients in process; c-3's training fails in round 2."""

    def members(self) -> Mapping[str, Mapping[str, Any]]:
        return {cid: ff.FakeTrainer(cid).capabilities() for cid in IDS}

    def train(self, round_number: int, tasks: Mapping[str, Mapping[str, Any]],
              state: Mapping[str, torch.Tensor]) -> Iterator[tuple[str, TaskOutcome]]:
        for cid, settings in tasks.items():
            if cid == "c-3" and round_number == 2:
                yield cid, ClientFailed(wire.Error(2, cid, wire.E_TRAINING_FAILED, "fake"))
            else:
                yield cid, ff.FakeTrainer(cid).train_round(round_number, dict(state),
                                                           dict(settings))


def test_three_clients_with_secure_aggregation_end_where_the_in_process_run_does(
        tmp_path: Path) -> None:
    trainers = {cid: ff.FakeTrainer(cid) for cid in IDS}
    trainers["c-3"] = ff.FakeTrainer("c-3", fail_rounds=frozenset({2}))
    run = asyncio.run(ff.run_in_process(tmp_path, IDS, rounds=3, clients_per_round=3,
                                        trainers=trainers, **MASKED))
    assert run.outcome.completed
    assert run.client_rounds == {"c-1": 3, "c-2": 3, "c-3": 2}
    # The same run in process without secure aggregation, c-3 failing alike.
    expected = drive(ff.strategy(3), ff.initial_state(), RoundRules(**PLAIN), 3,
                     FailingInRound2(), ff.evaluate)
    step = 2.0 ** -scale_bits(3, 100, 4.0)
    for name, tensor in expected.items():
        torch.testing.assert_close(run.outcome.global_state[name], tensor, rtol=0,
                                   atol=3 * step)
    records = read_records(tmp_path / "results.json")
    for record in records:
        updated = {c.client_id for c in record.clients
                   if c.outcome.status is ClientStatus.UPDATED}
        assert updated == ({"c-1", "c-2"} if record.round == 2 else set(IDS))
        for client in record.clients:
            if client.client_id in updated:
                assert client.outcome.masked and client.outcome.num_examples == 0
                assert client.traffic.payload_uplink_bytes > 0
                # Keys, shares and unmasking cost frames beyond the masked input.
                assert client.traffic.wire_uplink_bytes > client.traffic.payload_uplink_bytes
    failed = records[1].clients[2]
    assert failed.outcome.status is ClientStatus.FAILED


def test_a_resumed_server_goes_on_from_the_recorded_epsilon(tmp_path: Path) -> None:
    rules: dict[str, Any] = {
        "clip": ClipMode.ABSOLUTE, "clip_norm": 1.0, "min_updates": 2,
        "privacy": PrivacyRules(secure_aggregation=True, noise_multiplier=0.8, clip_range=4.0)}
    first = asyncio.run(ff.run_in_process(tmp_path, IDS, rounds=2, clients_per_round=3,
                                          **rules))
    assert first.outcome.completed

    async def resume() -> RunOutcome:
        tokens = make_tokens(IDS)
        server = ff.make_server(tmp_path, tokens, rounds=3, clients_per_round=3, resume=True,
                                **rules)
        serving = asyncio.create_task(server.run())
        await server.started.wait()
        clients = [asyncio.create_task(ff.client(server, cid, tokens[cid]).run())
                   for cid in IDS]
        outcome = await asyncio.wait_for(serving, 20)
        await asyncio.wait_for(asyncio.gather(*clients), 20)
        return outcome

    outcome = asyncio.run(resume())
    assert outcome.completed
    assert [r.round for r in outcome.rounds] == [1, 2, 3]
    release = DpRound(0.8, 3, 3)
    for record in outcome.rounds:
        assert record.privacy["epsilon"] == Accountant(
            1e-5, history=[release] * record.round).epsilon()
