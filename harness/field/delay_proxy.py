"""A userspace TCP proxy that adds a fixed one-way delay in each direction.

This kernel has no ``netem``, so the round-trip time of a field link comes from here: the client
connects to the proxy, the proxy to the server, and every chunk read from one side is written to
the other ``delay_s`` later. Chunks keep their order (one FIFO per direction) and reading never
waits for the delay: a reader only pauses when more than ``buffer_bytes`` are in flight inside the
proxy, far above any link's bandwidth-delay product, so the proxy adds latency without limiting
the rate (the ``tc`` shaper does that).

The proxy also times the traffic: every forwarded :class:`Chunk` is kept per direction, in
stream order, so a byte offset of the stream (as the server counts it per round) maps to a time.
Uplink chunks are timed as they arrive (after the client's shaped link); a downlink chunk ends
when the client has acknowledged its last byte (read from the socket's send queue,
``TIOCOUTQ``), so the kernel's send buffer does not hide the time bytes spend on the shaped link.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import logging
import socket
import struct
import termios
import threading
import time
from collections import deque
from dataclasses import dataclass

log = logging.getLogger(__name__)

CHUNK = 65536
ACK_POLL_S = 0.005
ACK_SLACK_BYTES = 2 * 1448
"""Two segments may stay unacknowledged: a receiver delays the ACK of an odd last segment by
up to 200 ms, which is the receiver's timer, not time on the link."""


def unacknowledged_bytes(sock: socket.socket) -> int:
    """Bytes written to a TCP socket that the peer has not acknowledged yet (Linux)."""
    raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, struct.pack("i", 0))
    return int(struct.unpack("i", raw)[0])


@dataclass
class Chunk:
    """One chunk the proxy forwarded: when it moved and how many bytes it held.

    Uplink chunks are stamped when read (they have crossed the client's shaped link then), so
    the time the first chunk of a transfer spent on the link is not seen (at most 64 KiB);
    downlink chunks by :class:`_AckWatcher`, from when they could go on the link to when the
    client acknowledged their last byte.
    """

    start: float  # time.monotonic()
    end: float
    nbytes: int


class _AckWatcher:
    """Times each written chunk by the peer's acknowledgements: a chunk ends when the client has
    acknowledged its last byte, and starts no earlier than the chunk before it ended (until then
    it waited in the socket buffer, not on the link). Polls ``TIOCOUTQ`` while bytes are
    unacknowledged, and sleeps otherwise."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.written = 0
        self.pending: deque[tuple[int, Chunk]] = deque()  # (stream offset after it, chunk)
        self.previous_end = 0.0
        self.wake = asyncio.Event()

    def wrote(self, chunk: Chunk) -> None:
        """``chunk`` was just handed to the writer."""
        self.written += chunk.nbytes
        self.pending.append((self.written, chunk))
        self.wake.set()

    def _finish(self, upto: int, now: float) -> None:
        while self.pending and self.pending[0][0] - upto <= ACK_SLACK_BYTES:
            _, chunk = self.pending.popleft()
            chunk.start = max(chunk.start, self.previous_end)
            chunk.end = self.previous_end = now

    def flush(self) -> None:
        """The connection is gone: every chunk still unacknowledged ends now (so chunk starts
        stay in write order even when the watcher is cancelled mid-transfer)."""
        self._finish(self.written, time.monotonic())

    async def run(self) -> None:
        sock = self.writer.get_extra_info("socket")
        while True:
            await self.wake.wait()
            while self.pending:
                try:
                    waiting = self.writer.transport.get_write_buffer_size()
                    acked = self.written - waiting - unacknowledged_bytes(sock)
                except (OSError, AttributeError, ValueError):  # closed: what is left ends now
                    self.flush()
                    return
                self._finish(acked, time.monotonic())
                if self.pending:
                    await asyncio.sleep(ACK_POLL_S)
            self.wake.clear()


class _DelayedPipe:
    """One direction: read chunks, hold each for ``delay_s``, write them in order."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 delay_s: float, buffer_bytes: int, chunks: list[Chunk], time_on_read: bool
                 ) -> None:
        self.reader, self.writer, self.delay_s = reader, writer, delay_s
        self.buffer_bytes, self.chunks, self.time_on_read = buffer_bytes, chunks, time_on_read
        self.queue: deque[tuple[float, bytes]] = deque()
        self.queued = 0
        self.ready = asyncio.Event()  # something is queued
        self.room = asyncio.Event()  # fewer than buffer_bytes are queued
        self.room.set()
        self.acks = None if time_on_read else _AckWatcher(writer)

    async def read_loop(self) -> None:
        while True:
            data = await self.reader.read(CHUNK)
            now = time.monotonic()
            if data and self.time_on_read:
                self.chunks.append(Chunk(now, now, len(data)))
            self.queue.append((now + self.delay_s, data))
            self.queued += len(data)
            self.ready.set()
            if not data:
                return
            if self.queued > self.buffer_bytes:
                self.room.clear()
                await self.room.wait()

    async def write_loop(self) -> None:
        while True:
            await self.ready.wait()
            due, data = self.queue.popleft()
            if not self.queue:
                self.ready.clear()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:  # end of stream: pass the half-close on
                if self.writer.can_write_eof():
                    self.writer.write_eof()
                return
            self.writer.write(data)
            if self.acks is not None:
                now = time.monotonic()
                chunk = Chunk(now, now, len(data))
                self.chunks.append(chunk)
                self.acks.wrote(chunk)
            await self.writer.drain()
            self.queued -= len(data)
            if self.queued <= self.buffer_bytes:
                self.room.set()


class DelayProxy:
    """Listen on ``listen_host``; forward each connection to ``target`` with the delay."""

    def __init__(self, listen_host: str, target_host: str, target_port: int, delay_s: float,
                 buffer_bytes: int = 8 << 20) -> None:
        self.listen_host, self.target_host, self.target_port = listen_host, target_host, target_port
        self.delay_s, self.buffer_bytes = delay_s, buffer_bytes
        self.chunks: dict[str, list[Chunk]] = {"up": [], "down": []}
        self.port = 0
        self._server: asyncio.Server | None = None
        self._ids = itertools.count()
        self._tasks: set[asyncio.Task[object]] = set()

    async def start(self, port: int = 0) -> int:
        """Start listening (``port`` 0: any free port); returns the port."""
        self._server = await asyncio.start_server(self._handle, self.listen_host, port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("delay proxy %s:%d -> %s:%d, %.1f ms each way", self.listen_host, self.port,
                 self.target_host, self.target_port, self.delay_s * 1000)
        return self.port

    async def close(self) -> None:
        """Stop listening and cut every open connection."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _handle(self, c_reader: asyncio.StreamReader,
                      c_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = next(self._ids)
        try:
            s_reader, s_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError as exc:
            log.warning("proxy connection %d: cannot reach the server: %s", conn, exc)
            c_writer.close()
            self._tasks.discard(task)
            return
        for writer in (c_writer, s_writer):
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        up = _DelayedPipe(c_reader, s_writer, self.delay_s, self.buffer_bytes,
                          self.chunks["up"], time_on_read=True)
        down = _DelayedPipe(s_reader, c_writer, self.delay_s, self.buffer_bytes,
                            self.chunks["down"], time_on_read=False)
        assert down.acks is not None
        loops = [asyncio.ensure_future(loop) for loop in
                 (up.read_loop(), up.write_loop(), down.read_loop(), down.write_loop())]
        watcher = asyncio.ensure_future(down.acks.run())
        try:
            # Ends when both directions have passed their end of stream on, or one side failed.
            done, _ = await asyncio.wait(loops, return_when=asyncio.FIRST_EXCEPTION)
            for loop in done:
                if not loop.cancelled() and loop.exception() is not None:
                    log.debug("proxy connection %d closed: %s", conn, loop.exception())
        except asyncio.CancelledError:  # close(): end quietly, the connections are cut below
            pass
        finally:
            for loop in [*loops, watcher]:
                loop.cancel()
            await asyncio.gather(*loops, watcher, return_exceptions=True)
            down.acks.flush()
            for writer in (c_writer, s_writer):
                writer.close()
            self._tasks.discard(task)


class ProxyGroup:
    """Several :class:`DelayProxy` instances on one event loop in a background thread, so a
    synchronous caller (``lpfl field``, which also watches processes) can run them.

    ``with ProxyGroup(specs, target_host, target_port) as ports:`` where each spec is
    ``(listen_host, one_way_delay_s)``; after the block, :attr:`proxies` keep their chunks.
    """

    def __init__(self, specs: list[tuple[str, float]], target_host: str,
                 target_port: int) -> None:
        self.proxies = [DelayProxy(host, target_host, target_port, delay)
                        for host, delay in specs]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="delay-proxies",
                                        daemon=True)

    def __enter__(self) -> list[int]:
        self._thread.start()
        try:
            return [asyncio.run_coroutine_threadsafe(p.start(), self._loop).result(timeout=30)
                    for p in self.proxies]
        except BaseException:
            self.__exit__(None, None, None)
            raise

    def __exit__(self, *exc: object) -> None:
        for proxy in self.proxies:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(proxy.close(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()
