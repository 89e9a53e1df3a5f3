"""Bad peers against a live aggregator: wrong credentials, stale and malformed messages, dropped
uploads, fuzzed frames. Each time the server answers with an error frame (or closes that one
connection) and the run still completes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import tempfile
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from lpfl import protocol, wire
from lpfl.edge_client.connection import ClientError
from lpfl.server.app import AggregatorServer, RunOutcome
from lpfl.tensors import encode_tensors
from lpfl.tokens import make_tokens
from lpfl.transport import ServerSettings
from tests import fake_federation as ff

CAPS = {"backend": "raw", "cpu_arch": "x86_64", "memory_bytes": 0, "runtime": {}}


@asynccontextmanager
async def raw(server: AggregatorServer, cid: str, token: str) -> AsyncIterator[ClientConnection]:
    """A bare websocket speaking for ``cid``: tests write the protocol by hand."""
    headers = {wire.CLIENT_ID_HEADER: cid, "Authorization": f"Bearer {token}"}
    async with connect(f"ws://127.0.0.1:{server.port}", additional_headers=headers,
                       compression=None, max_size=wire.MAX_FRAME_BYTES) as ws:
        yield ws


async def receive(ws: ClientConnection) -> wire.Message:
    data = await asyncio.wait_for(ws.recv(), 5)
    assert isinstance(data, bytes)
    return wire.parse(data)


async def hello(ws: ClientConnection, cid: str) -> None:
    await ws.send(wire.Hello(0, cid, CAPS).serialize())
    ack = await receive(ws)
    assert isinstance(ack, wire.Ack) and ack.of == wire.HELLO


async def send(ws: ClientConnection, message: wire.Message, chunk_bytes: int = 100) -> None:
    for frame in message.frames(chunk_bytes):
        await ws.send(frame)


async def closed(ws: ClientConnection) -> None:
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 5)


Scenario = Callable[[AggregatorServer, dict[str, str]], Awaitable[None]]


def with_server(folder: Path, scenario: Scenario, ids: list[str], *, rounds: int = 1,
                clients_per_round: int = 1, settings: dict[str, Any] | None = None,
                **rules: Any) -> RunOutcome:
    """Start a server, run ``scenario`` against it, and return how the run ended."""

    async def main() -> RunOutcome:
        tokens = make_tokens(ids)
        server = ff.make_server(folder, tokens, rounds=rounds,
                                clients_per_round=clients_per_round, settings=settings, **rules)
        serving = asyncio.create_task(server.run())
        await server.started.wait()
        await scenario(server, tokens)
        return await asyncio.wait_for(serving, 20)

    return asyncio.run(main())


def test_stale_round_update_is_refused_with_an_error_frame(tmp_path: Path) -> None:
    async def scenario(server: AggregatorServer, tokens: dict[str, str]) -> None:
        async with raw(server, "r-1", tokens["r-1"]) as ws:
            await hello(ws, "r-1")
            first = await receive(ws)
            assert isinstance(first, wire.Task) and first.round == 1
            await send(ws, wire.Update(1, "r-1", first.tensors, 5))
            assert isinstance(await receive(ws), wire.Ack)
            second = await receive(ws)
            assert isinstance(second, wire.Task) and second.round == 2
            await send(ws, wire.Update(1, "r-1", first.tensors, 5))  # refused from its header
            error = await receive(ws)
            assert isinstance(error, wire.Error) and error.code == wire.E_STALE_ROUND
            await send(ws, wire.Update(2, "r-1", second.tensors, 5))
            assert isinstance(await receive(ws), wire.Ack)
            assert isinstance(await receive(ws), wire.Bye)

    outcome = with_server(tmp_path, scenario, ["r-1"], rounds=2)
    assert outcome.completed and len(outcome.rounds) == 2


def test_bad_credentials_are_refused_during_the_handshake(tmp_path: Path) -> None:
    async def scenario(server: AggregatorServer, tokens: dict[str, str]) -> None:
        for cid, token in [("c-1", "wrong-token-0123456789"), ("nobody", tokens["c-1"])]:
            with pytest.raises(InvalidStatus) as info:
                async with raw(server, cid, token):
                    pass
            assert info.value.response.status_code == 401
        # An upgrade request with a bad token, with a 1 MiB frame pipelined behind it: the
        # connection is closed without the frame being accepted.
        request = (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade"
                   b"\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13"
                   b"\r\nX-LPFL-Client-Id: c-1\r\nAuthorization: Bearer nope\r\n\r\n")
        frame = b"\x82\xff" + (2**20).to_bytes(8, "big") + b"mask" + bytes(2**20)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(request + frame)
        response = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert response.startswith(b"HTTP/1.1 401")  # the frame was never read
        assert server.machine.clients == {}
        with pytest.raises(ClientError, match="401"):
            await ff.client(server, "c-1", "wrong-token-0123456789").run()
        assert await ff.client(server, "c-1", tokens["c-1"]).run() == 1

    assert with_server(tmp_path, scenario, ["c-1"]).completed


def test_a_connection_must_open_with_its_own_hello_in_time(tmp_path: Path) -> None:
    async def scenario(server: AggregatorServer, tokens: dict[str, str]) -> None:
        token = tokens["c-1"]
        async with raw(server, "c-1", token) as ws:
            error = await receive(ws)
            assert isinstance(error, wire.Error) and error.code == wire.E_TIMEOUT
            await closed(ws)
        async with raw(server, "c-1", token) as ws:
            await ws.send(wire.Bye(0, "c-1").serialize())
            error = await receive(ws)
            assert isinstance(error, wire.Error) and error.code == wire.E_UNEXPECTED
            await closed(ws)
        async with raw(server, "c-1", token) as ws:
            await ws.send(wire.Hello(0, "c-2", CAPS).serialize())
            error = await receive(ws)
            assert isinstance(error, wire.Error) and error.code == wire.E_UNAUTHORIZED
            await closed(ws)
        assert await ff.client(server, "c-1", token).run() == 1

    outcome = with_server(tmp_path, scenario, ["c-1", "c-2"], settings={"hello_timeout_s": 0.2})
    assert outcome.completed


def test_oversized_payloads_are_refused_before_they_are_read(tmp_path: Path) -> None:
    async def scenario(server: AggregatorServer, tokens: dict[str, str]) -> None:
        limit = server.machine.max_update_bytes()
        good = asyncio.create_task(ff.client(server, "c-1", tokens["c-1"]).run())
        async with raw(server, "c-2", tokens["c-2"]) as ws:
            await hello(ws, "c-2")
            assert isinstance(await receive(ws), wire.Task)
            first_frame = next(wire.Update(1, "c-2", bytes(limit + 1), 1).frames(100))
            await ws.send(first_frame)  # the other frames are never sent
            error = await receive(ws)
            assert isinstance(error, wire.Error) and error.code == wire.E_TOO_LARGE
            await ws.send("text")
            error = await receive(ws)
            assert isinstance(error, wire.Error) and error.code == wire.E_BAD_FRAME
            await ws.send(bytes(wire.MAX_FRAME_BYTES + 1))  # beyond websockets' max_size
            await closed(ws)
            assert ws.close_code == 1009
        assert await good == 1

    outcome = with_server(tmp_path, scenario, ["c-1", "c-2"], clients_per_round=2)
    assert outcome.completed
    (c2,) = [c for c in outcome.rounds[0].clients if c.client_id == "c-2"]
    assert (c2.outcome.status, c2.outcome.code) == ("rejected", wire.E_TOO_LARGE)


def _frame(document: dict[str, Any], payload: bytes) -> bytes:
    """A hand-made first frame: length, JSON header, payload."""
    header = json.dumps(document).encode()
    return len(header).to_bytes(4, "big") + header + payload


def _update_document(payload_bytes: int, num_examples: object = 3) -> dict[str, Any]:
    return {"schema_version": 1, "type": "update", "round": 1, "client_id": "c-2",
            "payload_bytes": payload_bytes, "body": {"num_examples": num_examples, "metrics": {}}}


def _state(value: float, extra: int = 0) -> dict[str, torch.Tensor]:
    state = ff.initial_state()
    state["head.bias"] = torch.full((3 + extra,), value)
    return state


REFUSALS: dict[str, tuple[list[bytes], str]] = {
    "bad_message": ([_frame(_update_document(10, num_examples="3"), bytes(10))],
                    wire.E_BAD_MESSAGE),
    "no examples": ([wire.Update(1, "c-2", encode_tensors(_state(1.0)), 0).serialize()],
                    wire.E_INVALID_UPDATE),
    "payload overrun": ([_frame(_update_document(10), bytes(5)), bytes(10)], wire.E_BAD_FRAME),
    "NaN": ([wire.Update(1, "c-2", encode_tensors(_state(math.nan)), 3).serialize()],
            wire.E_INVALID_UPDATE),
    "shape": ([wire.Update(1, "c-2", encode_tensors(_state(1.0, extra=1)), 3).serialize()],
              wire.E_INVALID_UPDATE),
}


@pytest.mark.parametrize("kind", sorted(REFUSALS))
def test_a_refusal_ends_the_clients_turn_at_once_with_its_code(tmp_path: Path,
                                                                kind: str) -> None:
    frames, code = REFUSALS[kind]

    async def scenario(server: AggregatorServer, tokens: dict[str, str]) -> None:
        good = asyncio.create_task(ff.client(server, "c-1", tokens["c-1"]).run())
        async with raw(server, "c-2", tokens["c-2"]) as ws:
            await hello(ws, "c-2")
            assert isinstance(await receive(ws), wire.Task)
            for frame in frames:
                await ws.send(frame)
            error = await receive(ws)
            assert isinstance(error, wire.Error) and error.code == code
            assert error.reason and not error.reason.startswith(code)  # no repeated prefix
            assert isinstance(await receive(ws), wire.Bye)  # the round closed without waiting
        assert await good == 1

    outcome = with_server(tmp_path, scenario, ["c-1", "c-2"], clients_per_round=2,
                          deadline_s=60.0)
    record = outcome.rounds[0]
    assert record.seconds < 30  # not the deadline
    (c2,) = [c for c in record.clients if c.client_id == "c-2"]
    assert (c2.outcome.status, c2.outcome.code) == ("rejected", code) and c2.outcome.reason


def test_stalled_uploads_give_their_slots_back_and_honest_uploads_complete(
    tmp_path: Path,
) -> None:
    """As many clients as the default upload slots send an update's first frame and stall."""
    slots = ServerSettings().max_concurrent_uploads
    stallers = [f"s-{i}" for i in range(slots)]
    gate = threading.Event()

    async def scenario(server: AggregatorServer, tokens: dict[str, str]) -> None:
        trainer = ff.FakeTrainer("c-1", gate=gate)
        good = asyncio.create_task(ff.client(server, "c-1", tokens["c-1"], trainer).run())
        async with contextlib.AsyncExitStack() as stack:
            sockets = [await stack.enter_async_context(raw(server, cid, tokens[cid]))
                       for cid in stallers]
            for cid, ws in zip(stallers, sockets, strict=True):
                await hello(ws, cid)
            for cid, ws in zip(stallers, sockets, strict=True):
                task = await receive(ws)
                assert isinstance(task, wire.Task)
                await ws.send(next(wire.Update(1, cid, task.tensors, 5).frames(100)))
            await asyncio.sleep(0.2)  # the server holds every slot now
            gate.set()  # the honest client trains and uploads
            assert await good == 1
            for ws in sockets:
                error = await receive(ws)
                assert isinstance(error, wire.Error) and error.code == wire.E_TIMEOUT
                await closed(ws)

    outcome = with_server(tmp_path, scenario, ["c-1", *stallers], clients_per_round=slots + 1,
                          settings={"upload_frame_timeout_s": 0.5}, deadline_s=60.0)
    assert outcome.completed
    record = outcome.rounds[0]
    assert record.attempts == 1 and record.seconds < 30  # closed by the replies, not the deadline
    rows = {c.client_id: c for c in record.clients}
    assert rows["c-1"].outcome.status == "updated"
    assert {(rows[cid].outcome.status, rows[cid].outcome.code) for cid in stallers} == {
        ("rejected", wire.E_TIMEOUT)}


def test_a_client_told_the_run_was_aborted_does_not_report_success(tmp_path: Path) -> None:
    trainer = ff.FakeTrainer("c-1", fail_rounds=frozenset({1}))

    async def scenario(server: AggregatorServer, tokens: dict[str, str]) -> None:
        with pytest.raises(ClientError, match="aborted"):
            await ff.client(server, "c-1", tokens["c-1"], trainer).run()

    assert not with_server(tmp_path, scenario, ["c-1"], max_attempts=1).completed


def test_client_dropping_mid_upload_does_not_stop_the_round(tmp_path: Path) -> None:
    async def scenario(server: AggregatorServer, tokens: dict[str, str]) -> None:
        good = asyncio.create_task(ff.client(server, "c-1", tokens["c-1"]).run())
        async with raw(server, "c-2", tokens["c-2"]) as ws:
            await hello(ws, "c-2")
            task = await receive(ws)
            assert isinstance(task, wire.Task)
            frames = list(wire.Update(1, "c-2", task.tensors, 5).frames(100))
            for frame in frames[:2]:
                await ws.send(frame)
            ws.transport.abort()  # like kill -9: no close frame, the rest never comes
        assert await good == 1

    outcome = with_server(tmp_path, scenario, ["c-1", "c-2"], clients_per_round=2)
    assert outcome.completed
    statuses = {c.client_id: c.outcome.status for c in outcome.rounds[0].clients}
    assert statuses == {"c-1": "updated", "c-2": "dropped"}


def test_a_reconnecting_client_replaces_its_older_connection(tmp_path: Path) -> None:
    async def scenario(server: AggregatorServer, tokens: dict[str, str]) -> None:
        async with raw(server, "c-1", tokens["c-1"]) as old:
            await hello(old, "c-1")
            assert isinstance(await receive(old), wire.Task)
            assert await ff.client(server, "c-1", tokens["c-1"]).run() == 1
            error = await receive(old)
            assert isinstance(error, wire.Error) and error.code == wire.E_REPLACED
            await closed(old)

    outcome = with_server(tmp_path, scenario, ["c-1"])
    assert outcome.rounds[0].attempts == 2  # the replaced connection's attempt failed


def test_port_refuses_plain_tcp_garbage(tmp_path: Path) -> None:
    async def scenario(server: AggregatorServer, tokens: dict[str, str]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"\x00\xff garbage that is not HTTP\r\n\r\n")
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, nothing answered
        writer.close()
        assert await ff.client(server, "c-1", tokens["c-1"]).run() == 1

    assert with_server(tmp_path, scenario, ["c-1"]).completed


def _valid_frames() -> list[bytes]:
    payload = encode_tensors(ff.initial_state())
    messages: list[wire.Message] = [
        wire.Update(1, "fz-1", payload, 3), wire.Update(2, "fz-1", payload, 3),
        wire.Error(1, "fz-1", wire.E_TRAINING_FAILED, "x"), wire.Hello(1, "fz-1", CAPS),
        wire.Task(1, "fz-1", payload, {}, "fp32", 1.0), wire.Ack(1, "fz-1", wire.UPDATE),
    ]
    return [bytes(f) for m in messages for f in m.frames(200)]


FRAMES = _valid_frames()


def _mutate(frame: bytes, edits: list[tuple[int, int]]) -> bytes:
    data = bytearray(frame)
    for position, value in edits:
        data[position % len(data)] = value
    return bytes(data)


fuzz_frame = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=40),
    st.sampled_from(FRAMES),
    st.builds(_mutate, st.sampled_from(FRAMES),
              st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1,
                       max_size=4)),
)


@given(frames=st.lists(fuzz_frame, max_size=8))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_fuzzed_frames_never_crash_the_server_and_the_round_completes(
    frames: list[bytes | str],
) -> None:
    gate = threading.Event()

    async def scenario(server: AggregatorServer, tokens: dict[str, str]) -> None:
        trainer = ff.FakeTrainer("c-1", gate=gate)
        good = asyncio.create_task(ff.client(server, "c-1", tokens["c-1"], trainer).run())
        while server.machine.phase is not protocol.Phase.TRAINING:
            await asyncio.sleep(0.005)
        async with raw(server, "fz-1", tokens["fz-1"]) as ws:
            await hello(ws, "fz-1")
            try:
                for frame in frames:
                    await ws.send(frame)
                while True:  # read replies until the server goes quiet
                    await asyncio.wait_for(ws.recv(), 0.05)
            except (TimeoutError, ConnectionClosed):
                pass
        gate.set()
        assert await good == 1

    with tempfile.TemporaryDirectory() as folder:
        outcome = with_server(Path(folder), scenario, ["c-1", "fz-1"], min_clients=1)
    assert outcome.completed
    assert [c.outcome.status for c in outcome.rounds[0].clients
            if c.client_id == "c-1"] == ["updated"]
