"""A client written from ``docs/protocol.md`` alone runs a whole federation against the real server.

Its side imports nothing of lpfl: the websocket layer is RFC 6455 by hand over asyncio streams
(masked binary frames, pongs for pings), the messages are JSON headers built per the document
(deliberately not in the canonical key order), and the payloads are safetensors files with the
document's metadata keys and int8 formula. Only the server side of the test uses lpfl. If the
document leaves out something a client needs, this test is where it shows.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import struct
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from lpfl.server.app import RunOutcome
from lpfl.tokens import make_tokens
from tests import fake_federation as ff

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CHUNK_BYTES = 65536
TARGET = 2.0


class RawWebSocket:
    """The client side of RFC 6455: a reader task answers pings and queues binary messages."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self.messages: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.pongs = 0
        self._task = asyncio.create_task(self._read_loop())

    @classmethod
    async def open(cls, port: int, headers: Mapping[str, str], pipelined: bytes = b"",
                   split: int = 0) -> RawWebSocket:
        """Upgrade, sending ``pipelined`` frames right behind the request (the document says
        an authenticated request's early frames are read as if sent after the 101); with
        ``split``, the bytes go in two writes, the first ending ``split`` bytes before the end
        of the request."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16))
        lines = [b"GET / HTTP/1.1", b"Host: 127.0.0.1", b"Upgrade: websocket",
                 b"Connection: Upgrade", b"Sec-WebSocket-Key: " + key,
                 b"Sec-WebSocket-Version: 13"]
        lines += [f"{name}: {value}".encode() for name, value in headers.items()]
        request = b"\r\n".join(lines) + b"\r\n\r\n"
        data = request + pipelined
        if split:
            writer.write(data[: len(request) - split])
            await writer.drain()
            await asyncio.sleep(0.05)
            data = data[len(request) - split :]
        writer.write(data)
        response = await reader.readuntil(b"\r\n\r\n")
        assert response.startswith(b"HTTP/1.1 101"), response
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        assert b"sec-websocket-accept: " + accept.lower() in response.lower()
        return cls(reader, writer)

    @staticmethod
    def frame(data: bytes, opcode: int = 0x2) -> bytes:
        """One final, masked client frame."""
        mask = os.urandom(4)
        size = len(data)
        if size < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
        elif size < 2**16:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
        masked = (np.frombuffer(data, np.uint8)
                  ^ np.resize(np.frombuffer(mask, np.uint8), size)).tobytes()
        return head + mask + masked

    def send(self, data: bytes) -> None:
        self._writer.write(self.frame(data))

    async def _read_loop(self) -> None:
        try:
            while True:
                first, second = await self._reader.readexactly(2)
                size = second & 0x7F
                if size == 126:
                    (size,) = struct.unpack("!H", await self._reader.readexactly(2))
                elif size == 127:
                    (size,) = struct.unpack("!Q", await self._reader.readexactly(8))
                data = await self._reader.readexactly(size)  # servers do not mask
                opcode = first & 0x0F
                if opcode == 0x9:
                    self._writer.write(self.frame(data, 0xA))
                    self.pongs += 1
                elif opcode == 0x8:
                    self._writer.write(self.frame(data[:2], 0x8))
                    return
                elif opcode == 0x2:
                    await self.messages.put(data)
        except asyncio.IncompleteReadError:
            return
        finally:
            await self.messages.put(None)

    async def close(self) -> None:
        self._writer.close()
        await asyncio.wait([self._task], timeout=5)


# The lpfl layer, per the document's sections 2-4.


def message(kind: str, round_number: int, client_id: str, body: dict[str, Any],
            payload: bytes = b"") -> list[bytes]:
    """A message cut into frames: 4-byte big-endian header length, header, first chunk; then
    one chunk per frame. The header is valid JSON but not in lpfl's canonical form."""
    header = {"type": kind, "schema_version": 1, "client_id": client_id, "round": round_number,
              "body": body, "payload_bytes": len(payload)}
    text = json.dumps(header, indent=1).encode()
    first = struct.pack(">I", len(text)) + text + payload[:CHUNK_BYTES]
    return [first] + [payload[i : i + CHUNK_BYTES]
                      for i in range(CHUNK_BYTES, len(payload), CHUNK_BYTES)]


async def receive(ws: RawWebSocket) -> tuple[dict[str, Any], bytes]:
    """The next whole message: its header and its payload (joined from later frames)."""
    first = await asyncio.wait_for(ws.messages.get(), 10)
    assert first is not None, "the server closed the connection"
    (length,) = struct.unpack(">I", first[:4])
    header = json.loads(first[4 : 4 + length])
    payload = bytearray(first[4 + length :])
    while len(payload) < header["payload_bytes"]:
        frame = await asyncio.wait_for(ws.messages.get(), 10)
        assert frame is not None
        payload += frame
    return header, bytes(payload)


def decode(payload: bytes) -> dict[str, np.ndarray]:
    """A tensor payload as float32 arrays, reading ``lpfl.encoding`` and the int8 scales."""
    (size,) = struct.unpack("<Q", payload[:8])
    metadata = json.loads(payload[8 : 8 + size])["__metadata__"]
    arrays = st_load(payload)
    if metadata["lpfl.encoding"] == "int8":
        return {name: (q.astype(np.float32) * np.float32(float.fromhex(
            metadata[f"lpfl.scale.{name}"]))) for name, q in arrays.items()}
    return {name: a.astype(np.float32) for name, a in arrays.items()}


def encode(state: Mapping[str, np.ndarray], encoding: str) -> bytes:
    metadata = {"lpfl.encoding": encoding}
    tensors = {}
    for name, value in state.items():
        if encoding == "int8":
            peak = float(np.abs(value).max())
            scale = peak / 127 if peak > 0 else 1.0
            tensors[name] = np.clip(np.round(value / scale), -127, 127).astype(np.int8)
            metadata[f"lpfl.scale.{name}"] = scale.hex()
        else:
            tensors[name] = value.astype(np.float16 if encoding == "fp16" else np.float32)
    return st_save(tensors, metadata=metadata)


async def document_client(port: int, client_id: str, token: str, train_s: float,
                          split: int = 0) -> list[int]:
    """Hello (pipelined behind the upgrade), then answer every task until bye: the first by
    ``training_failed``, each later one with the state moved halfway to :data:`TARGET`, trained
    for ``train_s`` in a worker thread while the reader task keeps answering pings. Returns the
    round id of every task received."""
    caps = {"backend": "numpy", "cpu_arch": "x86_64", "memory_bytes": 1, "runtime": {}}
    hello = message("hello", 0, client_id, {"capabilities": caps})
    ws = await RawWebSocket.open(
        port, {"X-LPFL-Client-Id": client_id, "Authorization": f"Bearer {token}"},
        pipelined=b"".join(RawWebSocket.frame(f) for f in hello), split=split)
    header, _ = await receive(ws)
    assert (header["type"], header["body"]["of"]) == ("ack", "hello")
    tasks = []
    while True:
        header, payload = await receive(ws)
        if header["type"] == "bye":
            break
        if header["type"] != "task":
            continue  # an ack of an update
        tasks.append(header["round"])
        if len(tasks) == 1:
            replies = message("error", header["round"], client_id,
                              {"code": "training_failed", "reason": "out of memory"})
        else:
            state = decode(payload)
            await asyncio.to_thread(time.sleep, train_s)
            trained = {n: v + 0.5 * (TARGET - v) for n, v in state.items()}
            replies = message("update", header["round"], client_id,
                              {"num_examples": 7, "metrics": {"train_loss": 0.5}},
                              encode(trained, header["body"]["update_encoding"]))
        for frame in replies:
            ws.send(frame)
    await ws.close()
    assert ws.pongs > 0
    return tasks


@pytest.mark.parametrize("split", [0, 2])
def test_a_client_written_from_the_document_alone_completes_a_run(tmp_path: Path,
                                                                   split: int) -> None:
    """``split=2``: the request's final CRLF arrives with the pipelined hello, in a later read."""
    keepalive = {"ping_interval_s": 0.1, "ping_timeout_s": 0.5}

    async def main() -> tuple[list[int], RunOutcome]:
        tokens = make_tokens(["doc-1"])
        server = ff.make_server(tmp_path, tokens, rounds=2, clients_per_round=1,
                                settings=keepalive, task_encoding="fp16",
                                update_encoding="int8")
        serving = asyncio.create_task(server.run())
        await server.started.wait()
        assert server.port is not None
        # Its own event loop, as in another process: pings are answered only by its reader.
        tasks = await asyncio.to_thread(asyncio.run, document_client(
            server.port, "doc-1", tokens["doc-1"], train_s=1.0, split=split))
        return tasks, await asyncio.wait_for(serving, 20)

    tasks, outcome = asyncio.run(main())
    assert tasks == [1, 1, 2]  # the failed round is retried under the same round id
    assert outcome.completed
    first, second = outcome.rounds
    assert first.attempts == 2
    assert [(c.outcome.status, c.outcome.num_examples) for c in second.clients] == [("updated", 7)]
    for tensor in outcome.global_state.values():
        np.testing.assert_allclose(tensor.numpy(), 1.5, rtol=1e-3)  # 0 -> 1 -> 1.5
