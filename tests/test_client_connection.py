"""The edge client: backoff, settings, reconnecting to a restarted server, and what it does with
fatal errors and garbage from the server."""

from __future__ import annotations

import argparse
import asyncio
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from websockets.asyncio.server import ServerConnection, serve

from lpfl import protocol, wire
from lpfl.edge_client import cli as client_cli
from lpfl.edge_client.connection import Backoff, ClientError, ClientSettings, EdgeClient
from lpfl.errors import ConfigError, LpflError
from lpfl.server.app import RunOutcome
from lpfl.tokens import make_tokens
from tests import fake_federation as ff


def test_backoff_grows_jittered_up_to_the_maximum_and_resets() -> None:
    backoff = Backoff(0.5, 4.0, random.Random(0))
    delays = [backoff.next() for _ in range(8)]
    ceilings = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert len(set(delays)) == len(delays)  # jittered
    backoff.reset()
    assert backoff.next() <= 0.5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"server_url": "http://x"}, "ws:// or wss://"),
        ({"cafile": "ca.pem"}, "--cafile"),
        ({"client_id": "no spaces"}, "--client-id"),
        ({"token": ""}, "LPFL_TOKEN"),
        ({"backoff_max_s": 0.0}, "backoff_max_s"),
    ],
)
def test_client_settings_say_what_to_change(kwargs: dict[str, Any], message: str) -> None:
    values = {"server_url": "ws://127.0.0.1:1", "client_id": "c-1", "token": "t" * 20, **kwargs}
    with pytest.raises(ConfigError, match=message):
        ClientSettings(**values)


def test_trainer_capabilities_must_fit_the_hello() -> None:
    class Incomplete(ff.FakeTrainer):
        def capabilities(self) -> dict[str, Any]:
            return {"backend": "x"}

    with pytest.raises(wire.WireError, match="cpu_arch"):
        EdgeClient(ClientSettings("ws://127.0.0.1:1", "c-1", "t" * 20), Incomplete("c-1"))


def test_client_gives_up_when_no_server_answers() -> None:
    settings = ClientSettings(f"ws://127.0.0.1:{ff.free_port()}", "c-1", "t" * 20,
                              backoff_initial_s=0.01, backoff_max_s=0.05, give_up_after_s=0.3)
    with pytest.raises(ClientError, match="giving up"):
        asyncio.run(EdgeClient(settings, ff.FakeTrainer("c-1")).run())


def test_client_rejoins_a_restarted_server_at_the_next_round(tmp_path: Path) -> None:
    async def scenario() -> tuple[int, RunOutcome]:
        tokens = make_tokens(["c-1"])
        first = ff.make_server(tmp_path, tokens, rounds=3, clients_per_round=1)
        serving = asyncio.create_task(first.run())
        await first.started.wait()
        trainer = ff.FakeTrainer("c-1", {2: 0.05})
        edge = asyncio.create_task(ff.client(first, "c-1", tokens["c-1"], trainer).run())
        while len(first.history) < 1:
            await asyncio.sleep(0.01)
        serving.cancel()  # the server goes away mid-round 2
        with pytest.raises(asyncio.CancelledError):
            await serving
        await asyncio.sleep(0.1)
        second = ff.make_server(tmp_path, tokens, rounds=3, clients_per_round=1, resume=True,
                                settings={"port": first.port})
        outcome = await second.run()
        return await edge, outcome

    rounds, outcome = asyncio.run(scenario())
    assert rounds >= 3  # round 2 may have been trained twice
    assert [r.round for r in outcome.rounds] == [1, 2, 3]
    expected = ff.reference_state(["c-1"], rounds=3, clients_per_round=1)
    for name, tensor in expected.items():
        torch.testing.assert_close(outcome.global_state[name], tensor)


async def _scripted_server(script: list[wire.Message | bytes],
                           received: list[wire.Message]) -> tuple[Any, int]:
    """A bare websocket server that reads the hello, sends ``script``, and records replies."""

    async def handler(ws: ServerConnection) -> None:
        received.append(wire.parse(await ws.recv()))  # type: ignore[arg-type]
        for item in script:
            await ws.send(item if isinstance(item, bytes) else item.serialize())
            if isinstance(item, bytes):
                received.append(wire.parse(await ws.recv()))  # type: ignore[arg-type]
        await ws.wait_closed()

    server = await serve(handler, "127.0.0.1", 0, compression=None)
    return server, server.sockets[0].getsockname()[1]


def _settings(port: int) -> ClientSettings:
    return ClientSettings(f"ws://127.0.0.1:{port}", "c-1", "t" * 20, backoff_initial_s=0.01,
                          give_up_after_s=2.0)


def test_fatal_error_codes_stop_the_client() -> None:
    async def scenario() -> None:
        received: list[wire.Message] = []
        error = wire.Error(0, "c-1", wire.E_UNSUPPORTED_SCHEMA, "speak version 2")
        server, port = await _scripted_server([error], received)
        async with server:
            with pytest.raises(ClientError, match="unsupported_schema"):
                await EdgeClient(_settings(port), ff.FakeTrainer("c-1")).run()
        assert isinstance(received[0], wire.Hello)

    asyncio.run(scenario())


def test_garbage_from_the_server_is_answered_with_an_error_and_the_client_goes_on() -> None:
    async def scenario() -> None:
        received: list[wire.Message] = []
        bye = wire.Bye(1, "c-1", "done")
        server, port = await _scripted_server([b"junk", bye], received)
        async with server:
            assert await EdgeClient(_settings(port), ff.FakeTrainer("c-1")).run() == 0
        assert isinstance(received[1], wire.Error) and received[1].code == wire.E_BAD_FRAME

    asyncio.run(scenario())


def test_cli_needs_a_trainer_factory() -> None:
    parser = argparse.ArgumentParser()
    client_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["client", "--server", "ws://h:1", "--client-id", "c-1",
                              "--token", "t" * 20])
    assert args.give_up_after_s == 600.0
    with pytest.raises(LpflError, match="no trainer"):
        client_cli.run(args)


def test_round_settings_reach_the_trainer_unchanged(tmp_path: Path) -> None:
    seen: list[dict[str, Any]] = []

    class Recording(ff.FakeTrainer):
        def train_round(self, round_number: int, global_state: dict[str, torch.Tensor],
                        settings: dict[str, Any]) -> Any:
            seen.append(settings)
            return super().train_round(round_number, global_state, settings)

    run = asyncio.run(ff.run_in_process(tmp_path, ["c-1"], rounds=2, clients_per_round=1,
                                        trainers={"c-1": Recording("c-1")}))
    assert run.outcome.completed
    assert seen == [ff.round_settings(1), ff.round_settings(2)]
    assert run.server.machine.phase is protocol.Phase.FINISHED


def test_a_client_training_longer_than_the_ping_timeout_keeps_its_connection(
    tmp_path: Path,
) -> None:
    """Training runs in a worker thread, so the connection keeps answering pings meanwhile."""
    keepalive: dict[str, Any] = {"ping_interval_s": 0.1, "ping_timeout_s": 0.3}
    trainer = ff.FakeTrainer("c-1", delays={1: 1.5})  # five ping timeouts

    async def main() -> tuple[int, RunOutcome]:
        tokens = make_tokens(["c-1"])
        server = ff.make_server(tmp_path, tokens, rounds=1, clients_per_round=1,
                                settings=keepalive)
        serving = asyncio.create_task(server.run())
        await server.started.wait()
        client = ff.client(server, "c-1", tokens["c-1"], trainer, **keepalive)
        # The client gets its own event loop, as in its own process: the server's pings are
        # answered only if the client's loop stays free while it trains.
        rounds = await asyncio.to_thread(asyncio.run, client.run())
        return rounds, await serving

    rounds, outcome = asyncio.run(main())
    assert rounds == 1 and trainer.rounds == [1]
    (record,) = outcome.rounds
    assert record.attempts == 1 and [c.outcome.status for c in record.clients] == ["updated"]
