"""The edge client process: connects to the aggregator, trains when asked, and never gives up
early.

:class:`EdgeClient` is a thin adapter between a websocket and a :class:`Trainer`: it says hello
with the trainer's capabilities, runs each task's training in a worker thread (so pings keep the
connection alive), and uploads the result in the encoding the task asks for. A trainer exception
is sent to the server as a ``training_failed`` error and the client waits for the next task.
A task that asks for secure aggregation is answered with the client's public keys instead of its
update, and the client then takes part in the masking steps (:class:`lpfl.secagg.MaskingClient`,
computed in a worker thread too); a step it cannot take is reported as ``training_failed``.

When the connection fails (server restarting, network gone, the process behind it killed) the
client reconnects with jittered exponential backoff and rejoins at the next round. It stops when
the server says ``bye``, when the server refuses it for good (HTTP 401, an untrusted TLS
certificate, or an error code in :data:`lpfl.wire.FATAL_CODES`, among them ``aborted``: the run
stopped early, which the client reports as a failure), or after ``give_up_after_s`` without a
successful hello.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import ssl
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from lpfl import transport, wire
from lpfl.errors import ConfigError, LpflError
from lpfl.secagg import MaskingClient, SecAggError
from lpfl.tensors import decode_tensors, encode_tensors
from lpfl.trainer_api import Trainer, peak_rss_bytes

logger = logging.getLogger(__name__)

_FATAL_HTTP = (401, 403)


class ClientError(LpflError):
    """The client stopped for good: refused by the server, or it gave up reconnecting."""


@dataclass(frozen=True)
class ClientSettings:
    """How to reach the server and how patiently to retry.

    ``cafile`` is a PEM certificate to trust for ``wss://`` (a self-signed server's
    ``cert.pem``); empty uses the system's. Reconnect delays start near ``backoff_initial_s`` and
    double up to ``backoff_max_s``. ``max_task_bytes`` bounds the global state the client will
    receive. ``ping_timeout_s`` must outlast the slowest upload: a keepalive ping queues behind
    the update's frames, so on 3G (a 1.9 MB update takes ~60 s at 0.4 Mbit/s) websockets' 20 s
    default dropped clients mid-upload in the field runs.
    """

    server_url: str
    client_id: str
    token: str
    cafile: str = ""
    open_timeout_s: float = 10.0
    ping_interval_s: float = 20.0
    ping_timeout_s: float = 300.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    give_up_after_s: float = 600.0
    max_task_bytes: int = 4 * 2**30

    def __post_init__(self) -> None:
        scheme = urlparse(self.server_url).scheme
        if scheme not in ("ws", "wss"):
            raise ConfigError(f"--server {self.server_url!r} must be a ws:// or wss:// URL")
        if self.cafile and scheme != "wss":
            raise ConfigError("--cafile only makes sense with a wss:// server URL")
        try:
            wire.check_client_id(self.client_id)
        except wire.WireError as exc:
            raise ConfigError(f"--client-id: {exc.reason}") from None
        if not self.token:
            raise ConfigError("the client token is empty: pass --token or set LPFL_TOKEN")
        for name in ("open_timeout_s", "ping_interval_s", "ping_timeout_s", "backoff_initial_s",
                     "backoff_max_s", "give_up_after_s"):
            if not 0 < getattr(self, name) < math.inf:
                raise ConfigError(f"{name} must be a positive number")


class Backoff:
    """Jittered exponential backoff: attempt ``n`` waits between half and all of
    ``min(maximum, initial * 2**n)`` seconds, so a crowd of clients that lost the same server
    does not reconnect in lockstep. :meth:`reset` after a success."""

    def __init__(self, initial: float, maximum: float, rng: random.Random) -> None:
        self.initial = initial
        self.maximum = maximum
        self._rng = rng
        self._attempt = 0

    def next(self) -> float:
        ceiling = min(self.maximum, self.initial * 2.0 ** min(self._attempt, 60))
        self._attempt += 1
        return ceiling * (0.5 + 0.5 * self._rng.random())

    def reset(self) -> None:
        self._attempt = 0


class MeteredClientConnection(transport.MeteredProtocol, ClientConnection):
    """A client connection that counts every byte on its transport
    (:class:`~lpfl.transport.ByteMeter`)."""


class EdgeClient:
    """One client process's life: ``await run()`` returns the number of rounds it trained."""

    def __init__(self, settings: ClientSettings, trainer: Trainer,
                 rng: random.Random | None = None) -> None:
        self.settings = settings
        self.trainer = trainer
        self.capabilities = trainer.capabilities()
        wire.Hello(0, settings.client_id, self.capabilities).check()
        self.rounds_trained = 0
        self.last_round = 0
        self.wire_bytes_out = 0
        self.wire_bytes_in = 0
        """Every byte this client wrote to / read from its connections, all of them together."""
        self._last_welcome = time.monotonic()
        """When the server last accepted our hello (or when the client started)."""
        self._masking: MaskingClient | None = None
        """This client's side of the secure-aggregation round in progress, if any."""
        self._backoff = Backoff(settings.backoff_initial_s, settings.backoff_max_s,
                                rng or random.Random())
        self._ssl: ssl.SSLContext | None = None
        if urlparse(settings.server_url).scheme == "wss":
            self._ssl = ssl.create_default_context(cafile=settings.cafile or None)

    async def run(self) -> int:
        """Connect, train and reconnect until the server says bye; raise :class:`ClientError`
        if the server refuses this client or cannot be reached for ``give_up_after_s``."""
        while True:
            try:
                if await self._session():
                    return self.rounds_trained
                reason = "the server closed the connection"
            except InvalidStatus as exc:
                status = exc.response.status_code
                if status in _FATAL_HTTP:
                    raise ClientError(f"the server refused client {self.settings.client_id} "
                                      f"(HTTP {status}): check its id and token") from None
                reason = f"HTTP {status}"
            except ssl.SSLCertVerificationError as exc:
                raise ClientError(f"the server's TLS certificate is not trusted: {exc}; pass "
                                  "--cafile with its certificate") from None
            except (OSError, TimeoutError, ConnectionClosed, InvalidHandshake) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            waited = time.monotonic() - self._last_welcome
            if waited > self.settings.give_up_after_s:
                raise ClientError(f"no successful connection for {waited:.0f} s ({reason}); "
                                  "giving up")
            delay = self._backoff.next()
            logger.info("client %s: %s; reconnecting in %.1f s", self.settings.client_id,
                        reason, delay)
            await asyncio.sleep(delay)

    async def _session(self) -> bool:
        """One connection; True when the server said bye."""
        headers = {wire.CLIENT_ID_HEADER: self.settings.client_id,
                   "Authorization": f"Bearer {self.settings.token}"}
        metered: MeteredClientConnection | None = None
        try:
            async with connect(
                self.settings.server_url, additional_headers=headers, ssl=self._ssl,
                compression=None, max_size=wire.MAX_FRAME_BYTES, max_queue=wire.MAX_QUEUED_FRAMES,
                open_timeout=self.settings.open_timeout_s,
                ping_interval=self.settings.ping_interval_s,
                ping_timeout=self.settings.ping_timeout_s,
                create_connection=MeteredClientConnection,
            ) as ws:
                assert isinstance(ws, MeteredClientConnection)
                metered = ws
                return await self._converse(ws)
        finally:
            if metered is not None:
                self.wire_bytes_out += metered.meter.bytes_out
                self.wire_bytes_in += metered.meter.bytes_in

    async def _converse(self, ws: MeteredClientConnection) -> bool:
        """Hello, then handle the server's messages until it says bye (True)."""
        reader = wire.FrameReader({wire.TASK: self.settings.max_task_bytes},
                                  self.settings.client_id)
        await self._send(ws, wire.Hello(self.last_round, self.settings.client_id,
                                        self.capabilities))
        while True:
            message = await self._receive(ws, reader)
            if isinstance(message, wire.Bye):
                logger.info("client %s: server says bye (%s)", self.settings.client_id,
                            message.reason)
                return True
            if message is not None:
                await self._dispatch(ws, message)

    async def _receive(self, ws: ClientConnection, reader: wire.FrameReader) -> wire.Message | None:
        data = await ws.recv()
        try:
            if isinstance(data, str):
                raise wire.WireError(wire.E_BAD_FRAME, "text frames are not part of the protocol")
            return reader.feed(data)
        except wire.WireError as exc:
            logger.warning("client %s: bad frame from the server: %s", self.settings.client_id,
                           exc)
            await self._send(ws, wire.Error.of(self.last_round, self.settings.client_id,
                                               exc.code, exc.reason))
            return None

    async def _dispatch(self, ws: MeteredClientConnection, message: wire.Message) -> None:
        """React to one message from the server (a bye is handled by the caller)."""
        cid = self.settings.client_id
        if isinstance(message, wire.Task):
            await self._train(ws, message)
        elif isinstance(message, wire.PublicKeys | wire.ShareKeys | wire.Unmask):
            await self._mask_step(ws, message)
        elif isinstance(message, wire.Ack):
            if message.of == wire.HELLO:
                self._backoff.reset()
                self._last_welcome = time.monotonic()
            logger.info("client %s: server accepted %s (round %d, %s)", cid, message.of,
                        message.round, dict(message.detail))
        elif isinstance(message, wire.Error):
            if message.code == wire.E_ABORTED:
                raise ClientError(f"the server aborted the run: {message.reason}")
            if message.code in wire.FATAL_CODES:
                raise ClientError(f"the server refused client {cid}: {message.code}: "
                                  f"{message.reason}")
            logger.warning("client %s: server error %s in round %d: %s", cid, message.code,
                           message.round, message.reason)
        else:
            await self._send(ws, wire.Error.of(message.round, cid, wire.E_UNEXPECTED,
                                               f"a server may not send {message.TYPE}"))

    async def _train(self, ws: MeteredClientConnection, task: wire.Task) -> None:
        """Train on the task in a worker thread and upload the update, or report the failure."""
        cid = self.settings.client_id
        logger.info("client %s: training round %d", cid, task.round)
        start = time.perf_counter()
        try:
            reply: wire.Message = await asyncio.to_thread(self._train_sync, task)
        except Exception as exc:  # a failed round is reported to the server, never fatal
            logger.exception("client %s: round %d failed", cid, task.round)
            reply = wire.Error.of(task.round, cid, wire.E_TRAINING_FAILED,
                                  f"{type(exc).__name__}: {exc}")
        sent_before = ws.meter.bytes_out
        await self._send(ws, reply)
        if isinstance(reply, wire.Update):
            self._trained(task.round)
            logger.info("client %s: round %d uploaded in %.2f s: %d payload bytes, %d on the wire",
                        cid, task.round, time.perf_counter() - start, len(reply.tensors),
                        ws.meter.bytes_out - sent_before)

    def _trained(self, round_number: int) -> None:
        self.rounds_trained += 1
        self.last_round = round_number

    def _train_sync(self, task: wire.Task) -> wire.Update | wire.AdvertiseKeys:
        """Decode, train, encode (or start masking): the part of a round that runs in the worker
        thread."""
        start = time.perf_counter()
        global_state = decode_tensors(task.tensors)
        self._masking = None
        result = self.trainer.train_round(task.round, global_state, dict(task.settings))
        metrics: dict[str, Any] = {"compute_seconds": time.perf_counter() - start}
        metrics.update({name: float(value) for name, value in result.metrics.items()})
        metrics["peak_rss_bytes"] = float(peak_rss_bytes())
        if task.secure_aggregation is not None:
            self._masking = MaskingClient(self.settings.client_id, task.round,
                                          task.secure_aggregation, global_state, result.state,
                                          int(result.num_examples), metrics)
            return self._masking.advertise()
        update = wire.Update(task.round, self.settings.client_id,
                             encode_tensors(result.state, task.update_encoding),
                             int(result.num_examples), metrics)
        update.check()
        return update

    async def _mask_step(self, ws: MeteredClientConnection, message: wire.Message) -> None:
        """Answer one of the server's secure-aggregation messages, or report the round failed."""
        cid = self.settings.client_id
        masking = self._masking
        try:
            if masking is None:
                raise SecAggError(f"a {message.TYPE} arrived, but this client is not masking a "
                                  "round")
            reply: wire.Message = await asyncio.to_thread(masking.respond, message)
        except SecAggError as exc:
            logger.warning("client %s: secure aggregation of round %d stops: %s", cid,
                           message.round, exc)
            self._masking = None
            reply = wire.Error.of(message.round, cid, wire.E_TRAINING_FAILED,
                                  f"secure aggregation: {exc}")
        await self._send(ws, reply)
        if isinstance(reply, wire.MaskedInput):
            self._trained(message.round)
            logger.info("client %s: round %d masked input sent: %d payload bytes", cid,
                        message.round, len(reply.vector))

    async def _send(self, ws: ClientConnection, message: wire.Message) -> None:
        for frame in message.frames():
            await ws.send(frame)
