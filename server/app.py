"""The aggregator process: an asyncio websocket server around :class:`lpfl.protocol.RoundMachine`.

Everything about rounds (who trains, which update counts, when a round closes) is decided by the
machine; this module only moves bytes and time:

- authenticates each connection during the handshake (:mod:`lpfl.server.auth`), then expects a
  ``hello`` within ``hello_timeout_s``;
- reads frames through a :class:`lpfl.wire.FrameReader` per connection, refusing an update from its
  header when the machine would refuse it anyway, and receiving at most
  ``max_concurrent_uploads`` update payloads at a time, each within the round deadline and with
  every frame within ``upload_frame_timeout_s`` of the previous one (a stalled upload gives its
  slot back and ends that client's turn);
- tells the machine about every message it refuses, so a refusal ends that client's turn at
  once, with its code in the round record;
- turns messages, disconnects and timers into machine events, and carries out the machine's
  actions: messages go to a per-connection outbox drained by one writer task, so frames of two
  messages never interleave;
- relays the secure-aggregation steps' messages (keys, sealed shares, masked inputs, revealed
  shares) between the clients and the machine, which checks and sums them;
- after each round: evaluates the new global state (in a thread) and hands the evaluation to the
  machine, which commits that state or keeps the last good one (``max-accuracy-drop``); writes
  the committed state's checkpoint atomically, hands the history to the results writer, and
  tells the machine the round is recorded. With a background evaluator
  (:mod:`lpfl.server.background_eval`) the round is recorded at once and its evaluation is
  filled into its record when it comes back; the run ends when every evaluation is back.

Nothing a client sends can stop the server: a malformed frame, a refused update or a dropped
connection becomes an error frame, a log line and a client outcome in the round record.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from lpfl import protocol, transport, wire
from lpfl.errors import ConfigError, LpflError
from lpfl.privacy import DpRound
from lpfl.records import RoundRecord, Traffic
from lpfl.results import ResultsWriter
from lpfl.server.auth import TokenAuthenticator
from lpfl.server.background_eval import BackgroundEvaluator
from lpfl.server.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from lpfl.strategy import FedAvg
from lpfl.tls import server_ssl_context
from lpfl.transport import ServerSettings

logger = logging.getLogger(__name__)

Evaluate = Callable[[int, Mapping[str, torch.Tensor]], Mapping[str, float]]
"""``evaluate(round, global_state)``: metrics of the new global state (accuracy on the test
split, say). Runs in a worker thread after each round."""

CHECKPOINT_NAME = "checkpoint.safetensors"
_SECAGG_REPLIES = (wire.AdvertiseKeys, wire.ShareKeys, wire.MaskedInput, wire.UnmaskShares)
"""What a client sends in the secure-aggregation steps."""
_CLOSE_TIMEOUT_S = 5.0


_END_OF_REQUEST = b"\r\n\r\n"


class MeteredServerConnection(transport.MeteredProtocol, ServerConnection):
    """A server connection that counts every byte on its transport
    (:class:`~lpfl.transport.ByteMeter`) and holds back whatever a peer sends after its upgrade
    request until :meth:`decide` is called.

    websockets parses frames as soon as the request is in, before the request is authenticated.
    Held back, frames a client pipelines behind its upgrade request are neither parsed for an
    unauthenticated peer (it gets ``401``) nor lost for an authenticated one (they are read as
    if sent after the ``101``). While bytes are held the transport stops reading, so a peer
    cannot make the server buffer more than one read's worth.
    """

    _tail = b""
    """The last bytes of the request seen so far, to find its end across reads."""
    _held: bytearray | None = None
    """Bytes after the request's end, while the request is being authenticated."""
    _decided = False

    def data_received(self, data: bytes) -> None:
        if self._decided:
            super().data_received(data)
        elif self._held is not None:
            self._held += data
            self.transport.pause_reading()
        else:
            window = self._tail + data
            end = window.find(_END_OF_REQUEST)
            if end < 0:
                self._tail = window[-len(_END_OF_REQUEST) + 1 :]
                super().data_received(data)
                return
            cut = end + len(_END_OF_REQUEST) - len(self._tail)
            self._held = bytearray(data[cut:])
            if self._held:
                self.transport.pause_reading()
            super().data_received(data[:cut])

    def decide(self, admitted: bool) -> None:
        """Authentication is done: release the held bytes to the parser if ``admitted`` (after
        raising the frame size limit), else drop them unread."""
        held = self._held or b""
        self._held, self._decided = None, True
        if admitted:
            self.protocol.max_message_size = wire.MAX_FRAME_BYTES
            self.transport.resume_reading()
            if held:
                super().data_received(bytes(held))


class _Session:
    """One authenticated connection: its reader, its outbox and what its meter already counted."""

    def __init__(self, client_id: str, ws: MeteredServerConnection, limits: wire.PayloadLimits):
        self.client_id = client_id
        self.ws = ws
        self.reader = wire.FrameReader(limits, client_id)
        self.outbox: asyncio.Queue[wire.Message | None] = asyncio.Queue()
        self.counted_in = 0
        self.counted_out = 0


class _UploadTimeout(Exception):
    """An update's frames stopped coming, or came too slowly for the round deadline."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended: ``completed`` is False when a round failed too often (``reason``)."""

    completed: bool
    reason: str
    global_state: Mapping[str, torch.Tensor]
    rounds: list[RoundRecord]


class AggregatorServer:
    """Serves one federated run; ``await run()`` returns when it is finished or aborted.

    The model-specific parts are injected, so the server runs without any real model: the
    ``strategy`` (sampling, settings, aggregation), the ``initial_state`` (ignored when resuming),
    ``evaluate`` and the ``results`` writer. ``tokens`` maps client ids to their secrets.
    With ``resume``, the run continues after the last round in ``run_dir``'s checkpoint (global
    state, history, and this process's torch RNG state are restored); without it, an existing
    checkpoint is refused rather than overwritten. With ``max-accuracy-drop`` set, the initial
    state is evaluated first (on a resume, the last recorded evaluation is used): the accuracy
    guard's first reference. With differential privacy, a resumed run's ε goes on from the
    recorded rounds' (their ``privacy`` entries). With ``background``, rounds are evaluated by
    that evaluator instead of ``evaluate``, off the critical path.
    """

    def __init__(
        self,
        *,
        strategy: FedAvg,
        initial_state: Mapping[str, torch.Tensor],
        evaluate: Evaluate,
        results: ResultsWriter,
        settings: ServerSettings,
        tokens: Mapping[str, str],
        rounds: int,
        resume: bool = False,
        background: BackgroundEvaluator | None = None,
    ) -> None:
        self.settings = settings
        self.checkpoint_path = Path(settings.run_dir) / CHECKPOINT_NAME
        self.history: list[RoundRecord] = []
        state, first_round, reference = initial_state, 1, None
        evaluation: Mapping[str, float] | None = None
        if resume and self.checkpoint_path.is_file():
            checkpoint = load_checkpoint(self.checkpoint_path)
            state, first_round = checkpoint.global_state, checkpoint.round + 1
            self.history = list(checkpoint.rounds)
            if self.history:
                reference = protocol.median_norm(
                    [c.outcome.update_norm for c in self.history[-1].clients
                     if c.outcome.status.accepted])
                evaluation = self.history[-1].eval_metrics
            rng = torch.frombuffer(bytearray(checkpoint.rng_state), dtype=torch.uint8)
            torch.set_rng_state(rng)
            logger.info("resuming after round %d from %s", checkpoint.round, self.checkpoint_path)
        elif self.checkpoint_path.exists() and not resume:
            raise ConfigError(f"{self.checkpoint_path} holds an earlier run: resume it with "
                              "--resume, or choose another run_dir")
        if evaluation is None and settings.round.guards_accuracy:
            evaluation = evaluate(0, state)
            logger.info("initial global state: eval %s", dict(evaluation))
        spent = [DpRound.from_dict(r.privacy) for r in self.history if r.privacy]
        self.machine = protocol.RoundMachine(strategy, state, settings.round, rounds, first_round,
                                             reference, evaluation, spent)
        self._limits = {wire.UPDATE: self.machine.max_update_bytes(),
                        wire.MASKED_INPUT: self.machine.max_masked_bytes()}
        self._authenticate = TokenAuthenticator(tokens)
        self._evaluate = evaluate
        self._background = background
        self._evaluations: set[asyncio.Task[None]] = set()
        self._writing = asyncio.Lock()
        """Serialises checkpoint and results writes (rounds and late evaluations)."""
        self._checkpoint: Checkpoint | None = None
        self._results = results
        self._sessions: dict[str, _Session] = {}
        self._window: dict[str, Traffic] = {}
        """Each client's bytes since the last round closed."""
        self._upload_slots = asyncio.Semaphore(settings.max_concurrent_uploads)
        self._timer: asyncio.TimerHandle | None = None
        self._round_started: float | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._done: asyncio.Future[RunOutcome] | None = None
        self.port: int | None = None
        """The port actually bound (useful with ``port = 0``), set once :attr:`started` is."""
        self.started = asyncio.Event()

    async def run(self) -> RunOutcome:
        """Serve until every round is recorded (or the run aborts); then say bye and close."""
        self._done = asyncio.get_running_loop().create_future()
        self._resume_evaluations()
        if self.machine.phase is protocol.Phase.FINISHED:
            logger.info("all %d rounds are already recorded", self.machine.rounds)
            await self._evaluations_done()
            return RunOutcome(True, "already finished", self.machine.global_state, self.history)
        ssl = (server_ssl_context(self.settings.certfile, self.settings.keyfile)
               if self.settings.tls else None)
        listener = serve(
            self._handle, self.settings.host, self.settings.port, ssl=ssl,
            process_request=self._admit, compression=None, max_size=0,
            max_queue=wire.MAX_QUEUED_FRAMES, ping_interval=self.settings.ping_interval_s,
            ping_timeout=self.settings.ping_timeout_s,
            create_connection=MeteredServerConnection,
        )
        try:
            await listener
        except OSError as exc:
            raise LpflError(f"cannot listen on {self.settings.host}:{self.settings.port}: "
                            f"{exc.strerror or exc}") from None
        async with listener as server:
            self.port = server.sockets[0].getsockname()[1]
            logger.info("serving %s://%s:%d, round %d of %d",
                        "wss" if ssl else "ws", self.settings.host, self.port, self.machine.round,
                        self.machine.rounds)
            self.started.set()
            try:
                outcome = await self._done
            finally:
                if self._timer is not None:
                    self._timer.cancel()
                await self._close_sessions()
        await self._evaluations_done()
        return outcome

    def _resume_evaluations(self) -> None:
        """Evaluate the recorded rounds whose background evaluation a crash interrupted; drop
        the spooled states of rounds that were never recorded."""
        if self._background is None:
            return
        recorded = {r.round for r in self.history}
        for round_number in self._background.spooled():
            if round_number in recorded:
                self._evaluate_later(round_number)
            else:
                self._background.discard(round_number)

    def _evaluate_later(self, round_number: int) -> None:
        task = asyncio.get_running_loop().create_task(self._fill_evaluation(round_number))
        self._evaluations.add(task)
        task.add_done_callback(self._evaluations.discard)

    async def _fill_evaluation(self, round_number: int) -> None:
        """Wait for a round's background evaluation and write it into its record."""
        assert self._background is not None
        try:
            metrics, seconds = await self._background.evaluate(round_number)
        except LpflError as exc:
            logger.error("%s", exc)
            if self._done is not None and not self._done.done():
                self._done.set_exception(exc)
            raise
        async with self._writing:
            index = next(i for i, r in enumerate(self.history) if r.round == round_number)
            self.history[index] = dataclasses.replace(self.history[index], eval_metrics=metrics,
                                                      eval_seconds=seconds)
            await self._write_history()
        logger.info("round %d evaluated in the background in %.1f s: %s", round_number,
                    seconds, metrics)

    async def _evaluations_done(self) -> None:
        """Wait until every background evaluation is in its record, then stop the worker."""
        if self._background is None:
            return
        try:
            await asyncio.gather(*self._evaluations)
        finally:
            await asyncio.to_thread(self._background.close)

    async def _write_history(self) -> None:
        """Checkpoint the last committed state with the history as it is now, then hand the
        history to the results writer (call with ``_writing`` held)."""
        if self._checkpoint is not None:
            self._checkpoint = dataclasses.replace(self._checkpoint, rounds=list(self.history))
            await asyncio.to_thread(save_checkpoint, self.checkpoint_path, self._checkpoint)
        await asyncio.to_thread(self._results.write, list(self.history))

    async def _close_sessions(self) -> None:
        """Let every outbox drain (the byes), then close the connections."""
        for session in list(self._sessions.values()):
            session.outbox.put_nowait(None)
        pending = [t for t in self._tasks if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=_CLOSE_TIMEOUT_S)

    # Connections

    def _admit(self, connection: ServerConnection, request: Request) -> Response | None:
        """Authenticate the upgrade request; only then allow frames of up to
        :data:`wire.MAX_FRAME_BYTES` (the limit is 0 bytes until then) and read the frames the
        peer may have pipelined behind its request (:meth:`MeteredServerConnection.decide`)."""
        assert isinstance(connection, MeteredServerConnection)
        response = self._authenticate(connection, request)
        connection.decide(response is None)
        return response

    async def _handle(self, ws: ServerConnection) -> None:
        """One connection's life: hello, register, serve; on the way out, account its bytes and
        tell the machine the client left (unless a newer connection replaced it)."""
        assert isinstance(ws, MeteredServerConnection) and ws.request is not None
        client_id = ws.request.headers[wire.CLIENT_ID_HEADER]
        session = _Session(client_id, ws, self._limits)
        writer = self._spawn(self._write(session))
        registered = False
        try:
            hello = await self._hello(session)
            if hello is not None:
                self._register(session, hello)
                registered = True
                await self._serve(session)
        except ConnectionClosed:
            logger.info("client %s disconnected", client_id)
        except _UploadTimeout as exc:
            logger.warning("client %s: %s; closing its connection", client_id, exc.reason)
            self._refuse(session, wire.WireError(wire.E_TIMEOUT, exc.reason))
        finally:
            session.outbox.put_nowait(None)
            await asyncio.wait([writer], timeout=_CLOSE_TIMEOUT_S)
            self._account(session)
            if registered and self._sessions.get(client_id) is session:
                del self._sessions[client_id]
                self._apply(self.machine.handle(protocol.ClientLeft(client_id)))

    async def _hello(self, session: _Session) -> wire.Hello | None:
        """The connection's hello, or None after sending the error that refuses it."""
        cid = session.client_id
        try:
            async with asyncio.timeout(self.settings.hello_timeout_s):
                message = await self._receive(session)
        except TimeoutError:
            message = wire.Error.of(0, cid, wire.E_TIMEOUT,
                                    f"no hello within {self.settings.hello_timeout_s} s")
        except wire.WireError as exc:
            message = wire.Error.of(0, cid, exc.code, exc.reason)
        if isinstance(message, wire.Hello):
            return message
        if not isinstance(message, wire.Error):
            message = wire.Error.of(0, cid, wire.E_UNEXPECTED, "the first message must be hello")
        logger.warning("client %s refused before hello: %s", cid, message.reason)
        self._send(session, message)
        return None

    def _register(self, session: _Session, hello: wire.Hello) -> None:
        """Make ``session`` the client's connection, closing an older one, and tell the machine."""
        cid = session.client_id
        old = self._sessions.get(cid)
        self._sessions[cid] = session
        if old is not None:
            logger.info("client %s reconnected; closing its older connection", cid)
            self._send(old, wire.Error.of(self.machine.round, cid, wire.E_REPLACED,
                                          "a newer connection of this client took over"))
            old.outbox.put_nowait(None)
            self._apply(self.machine.handle(protocol.ClientLeft(cid)))
        logger.info("client %s joined: %s", cid, dict(hello.capabilities))
        self._apply(self.machine.handle(protocol.ClientJoined(cid, hello.capabilities)))

    async def _serve(self, session: _Session) -> None:
        """Handle the client's messages until it says bye or the connection closes."""
        while True:
            try:
                message = await self._receive(session)
            except wire.WireError as exc:
                logger.warning("client %s sent a bad frame: %s", session.client_id, exc)
                self._refuse(session, exc)
                continue
            if isinstance(message, wire.Update):
                self._count(session.client_id, Traffic(payload_uplink_bytes=len(message.tensors)))
                self._apply(self.machine.handle(protocol.UpdateReceived(message)))
            elif isinstance(message, _SECAGG_REPLIES):
                self._count(session.client_id, Traffic(payload_uplink_bytes=len(message.payload)))
                self._apply(self.machine.handle(protocol.SecAggReceived(message)))
            elif isinstance(message, wire.Error):
                self._apply(self.machine.handle(protocol.ClientFailed(message)))
            elif isinstance(message, wire.Bye):
                logger.info("client %s left: %s", session.client_id, message.reason)
                return
            else:
                self._refuse(session, wire.WireError(wire.E_UNEXPECTED,
                                                     f"a client may not send {message.TYPE} now"))
            # An update is folded in already: holding it while this client idles until the next
            # round would keep one payload alive per connection (memory O(clients)).
            del message

    async def _frame(self, session: _Session) -> bytes:
        data = await session.ws.recv()
        if isinstance(data, str):
            raise wire.WireError(wire.E_BAD_FRAME, "text frames are not part of the protocol")
        return data

    async def _receive(self, session: _Session) -> wire.Message:
        """The next whole message. An update the machine would refuse is answered from its
        header and its payload skipped unread; an accepted one is received while holding an
        upload slot, within the round deadline."""
        while True:
            message = session.reader.feed(await self._frame(session))
            if message is not None:
                return message
            pending = session.reader.pending
            # the only payload types a server accepts
            assert pending is not None and pending.type in (wire.UPDATE, wire.MASKED_INPUT)
            refusal = self.machine.screen_update(session.client_id, pending.round, pending.type)
            if refusal is not None:
                self._send(session, refusal)
                session.reader.discard()
                if refusal.code == wire.E_UNEXPECTED:  # the wrong reply ends the client's turn
                    self._apply(self.machine.handle(protocol.ClientRefused(
                        session.client_id, refusal.code, refusal.reason)))
            slot = self._upload_slots if refusal is None else contextlib.nullcontext()
            async with slot:
                message = await self._rest(session)
            if message is not None:
                return message

    async def _rest(self, session: _Session) -> wire.Message | None:
        """Feed frames until the pending message is complete; None if it was discarded. Raise
        :class:`_UploadTimeout` if the upload outlasts the round deadline or a frame is more
        than ``upload_frame_timeout_s`` behind the previous one."""
        deadline = asyncio.get_running_loop().time() + self.settings.round.deadline_s
        frame_timeout = self.settings.upload_frame_timeout_s
        message = None
        while session.reader.pending is not None:
            loop_time = asyncio.get_running_loop().time()
            try:
                async with asyncio.timeout_at(min(deadline, loop_time + frame_timeout)):
                    frame = await self._frame(session)
            except TimeoutError:
                if loop_time + frame_timeout < deadline:
                    raise _UploadTimeout(f"the upload stalled: no frame for {frame_timeout} s"
                                         ) from None
                raise _UploadTimeout("the upload took longer than the round deadline") from None
            message = session.reader.feed(frame)
        return message

    async def _write(self, session: _Session) -> None:
        """Send the outbox in order until its end marker, then close the connection."""
        try:
            while (message := await session.outbox.get()) is not None:
                for frame in message.frames():
                    await session.ws.send(frame)
                if isinstance(message, wire.Task):
                    self._count(session.client_id,
                                Traffic(payload_downlink_bytes=len(message.tensors)))
            await session.ws.close()
        except ConnectionClosed:
            return

    def _send(self, session: _Session, message: wire.Message) -> None:
        session.outbox.put_nowait(message)

    def _refuse(self, session: _Session, exc: wire.WireError) -> None:
        """Answer a refused message with its error, and end the client's turn in the round."""
        self._send(session, wire.Error.of(self.machine.round, session.client_id, exc.code,
                                          exc.reason))
        if self._sessions.get(session.client_id) is session:
            self._apply(self.machine.handle(protocol.ClientRefused(session.client_id, exc.code,
                                                                   exc.reason)))

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # Byte accounting

    def _count(self, client_id: str, traffic: Traffic) -> None:
        self._window[client_id] = self._window.get(client_id, Traffic()) + traffic

    def _account(self, session: _Session) -> None:
        """Move what the connection's meter counted since last time into the current window."""
        meter = session.ws.meter
        self._count(session.client_id,
                    Traffic(wire_uplink_bytes=meter.bytes_in - session.counted_in,
                            wire_downlink_bytes=meter.bytes_out - session.counted_out))
        session.counted_in, session.counted_out = meter.bytes_in, meter.bytes_out

    # Machine actions

    def _apply(self, actions: list[protocol.Action]) -> None:
        """Carry out the machine's actions in order; none of them blocks."""
        for action in actions:
            if isinstance(action, protocol.Send):
                session = self._sessions.get(action.client_id)
                if session is None:
                    logger.debug("dropping %s for absent client %s", action.message.TYPE,
                                 action.client_id)
                else:
                    self._send(session, action.message)
            elif isinstance(action, protocol.StartTimer):
                if self._timer is not None:
                    self._timer.cancel()
                if self._round_started is None:
                    self._round_started = time.monotonic()
                self._timer = asyncio.get_running_loop().call_later(
                    action.seconds, self._deadline, action.round, action.attempt, action.stage)
            elif isinstance(action, protocol.RoundClosed):
                self._spawn(self._record(action))
            elif isinstance(action, protocol.RoundFailed):
                logger.warning("%s; outcomes: %s", action.reason,
                               {c: str(o.status) for c, o in action.outcomes.items()})
            elif isinstance(action, protocol.RunFinished):
                self._finish(RunOutcome(True, action.reason or "finished", action.global_state,
                                        self.history))
            elif isinstance(action, protocol.RunAborted):
                self._finish(RunOutcome(False, action.reason, self.machine.global_state,
                                        self.history))
            # RoundCommitted answers the RoundEvaluated event that _record reports itself.

    def _deadline(self, round_number: int, attempt: int, stage: int) -> None:
        self._apply(self.machine.handle(protocol.DeadlinePassed(round_number, attempt, stage)))

    def _finish(self, outcome: RunOutcome) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_result(outcome)

    async def _record(self, closed: protocol.RoundClosed) -> None:
        """Evaluate a closed round, let the machine judge it, checkpoint and report what it
        committed, then let the machine go on."""
        try:
            evaluating = time.monotonic()
            if self._background is not None:
                await asyncio.to_thread(self._background.spool_state, closed.round,
                                        closed.global_state)
                metrics: Mapping[str, float] = {}
            else:
                metrics = await asyncio.to_thread(self._evaluate, closed.round,
                                                  closed.global_state)
            eval_seconds = time.monotonic() - evaluating
            metrics = {str(k): float(v) for k, v in metrics.items()}
            verdict = self.machine.handle(protocol.RoundEvaluated(closed.round, metrics))
            committed = next(a for a in verdict if isinstance(a, protocol.RoundCommitted))
            for session in self._sessions.values():
                self._account(session)
            window, self._window = self._window, {}
            seconds = time.monotonic() - (self._round_started or time.monotonic())
            self._round_started = None
            record = committed.record(window, seconds, self.machine.clients,
                                      0.0 if self._background is not None else eval_seconds)
            async with self._writing:
                self.history.append(record)
                self._checkpoint = Checkpoint(committed.round, committed.global_state,
                                              list(self.history),
                                              torch.get_rng_state().numpy().tobytes())
                await self._write_history()
            if self._background is not None:
                self._evaluate_later(closed.round)
            logger.info("round %d recorded: eval %s, %d bytes up, %d down on the wire",
                        closed.round, record.eval_metrics, record.traffic.wire_uplink_bytes,
                        record.traffic.wire_downlink_bytes)
            self._apply(self.machine.handle(protocol.RoundRecorded(closed.round)))
        except Exception as exc:
            logger.exception("round %d could not be recorded", closed.round)
            if self._done is not None and not self._done.done():
                self._done.set_exception(LpflError(f"round {closed.round} could not be "
                                                   f"recorded: {exc}"))

