"""The federated round as a state machine with no I/O: events in, actions out.

The aggregator's websocket server (``lpfl.server``) is a thin adapter around :class:`RoundMachine`:
it turns connections, messages and timers into events, hands them to :meth:`RoundMachine.handle`,
and carries out the returned actions (send a message, start a timer, evaluate a closed round,
checkpoint a committed one). :func:`lpfl.rounds.drive` is the in-process adapter the simulation
and the robustness benchmark use. Because the machine never touches a socket or a clock, every
rule below is tested directly, event by event.

One round goes through these phases::

    WAITING ──enough clients──▶ TRAINING ──all replied, or deadline──▶ EVALUATING ──recorded──▶ …
       ▲                          │ fewer than min_updates                                 │
       └────── retry the round ◀──┘                                    next round or FINISHED

- ``WAITING``: fewer than ``min_clients`` clients are connected; the round starts when one more
  joins.
- ``TRAINING``: the strategy sampled clients and each got a task. An update is screened by its
  round and sender (:meth:`RoundMachine.screen_update`), decoded and checked
  (:func:`lpfl.validation.check_update`: weight, metrics, names, dtypes, shapes, finite values;
  a refused one is the client's ``rejected`` outcome), its change from the global state is
  norm-clipped (:class:`ClipMode`), and it is folded into the strategy's accumulator as it
  arrives (for FedAvg a running weighted sum, so memory is one model's worth). A client that
  leaves, fails, has a message refused or misses the deadline simply has no update. Each
  client's :class:`~lpfl.records.ClientOutcome` goes into the round's verdict.
- The round closes once every sampled client has replied (or left), or at the deadline, or, with
  over-selection (``close_after``), as soon as that many updates are accepted: the clients still
  training are ``late`` and a reply they send afterwards is refused. With at
  least ``min_updates`` updates the strategy combines them into a proposed global state. The
  guard refuses a proposal that is not finite or moves further than the round's norm bound: the
  last good state stays and the updates are marked ``discarded`` with the reason. Either way the
  round goes to ``EVALUATING``; with fewer updates the round is tried again with the same
  global state, at most ``max_attempts`` times.
- With secure aggregation (``rules.privacy.secure_aggregation``, :mod:`lpfl.secagg`) a
  sampled client answers its task with its public keys instead of an update, and the round
  goes through three more steps before it closes: ``SHARING`` (the key list goes out, sealed
  key shares come back), ``MASKING`` (the shares are forwarded, masked inputs come back and are
  summed) and ``UNMASKING`` (the survivors list goes out, revealed shares come back and the sum
  is unmasked). Each step waits for every participant of the step before or
  ``phase_deadline_s``; fewer than the threshold (or than ``min_updates`` inputs) fail the
  attempt, which is retried with fresh keys like any failed attempt.
- With differential privacy (``rules.privacy.noise_multiplier`` > 0) updates are clipped to
  ``clip_norm``, averaged with equal weights and noised (:mod:`lpfl.privacy`); each round's ε
  is in its :class:`RoundCommitted`, and a round that would spend past ``epsilon_budget`` is
  not started: the run finishes there (:class:`RunFinished` says why).
- ``EVALUATING``: the adapter evaluates the state of :class:`RoundClosed` and reports
  :class:`RoundEvaluated`. With ``max_accuracy_drop`` set, that state is only proposed: the
  guard refuses it if its accuracy is more than ``max_accuracy_drop`` below the last committed
  state's, keeping the last good state. The machine answers with :class:`RoundCommitted`, the
  verdict the adapter checkpoints and records before it reports :class:`RoundRecorded`. (Without
  ``max_accuracy_drop`` the state is committed at once, and an adapter that does not evaluate
  may report :class:`RoundRecorded` straight after :class:`RoundClosed`.)
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from lpfl import secagg, wire
from lpfl.aggregation import Accumulator, clip_delta, delta_norm
from lpfl.errors import ConfigError
from lpfl.metrics import combine_client_metrics
from lpfl.privacy import (
    MAX_SECAGG_CLIENTS,
    Accountant,
    DpRound,
    PrivacyRules,
    gaussian_noise,
    noise_rng,
    require_accountant,
)
from lpfl.records import ClientOutcome, ClientRecord, ClientStatus, RoundRecord, Traffic
from lpfl.strategy import Aggregation, ClientUpdate, FedAvg, make_strategy
from lpfl.tensors import ENCODINGS, PayloadError, decode_tensors, encode_tensors
from lpfl.validation import InvalidUpdate, check_update

logger = logging.getLogger(__name__)


class ClipMode(enum.Enum):
    """How the L2 norm of each update's change from the global state (all tensors together) is
    bounded before aggregation.

    ``ADAPTIVE`` (the default): to ``norm_multiplier`` times the median accepted update norm of
    the latest attempt that had updates (the previous round, or this round's failed attempt).
    The guard also bounds every aggregate's step by ``norm_multiplier`` times the attempt's own
    median; in a run's first attempt, which has no earlier median, that is the only bound. A
    median of 0 (most updates changed nothing) bounds nothing, so a run cannot get stuck.
    ``ABSOLUTE``: to ``clip_norm``. ``OFF``: not at all (the guard still refuses a non-finite
    aggregate).
    """

    ADAPTIVE = "adaptive"
    ABSOLUTE = "absolute"
    OFF = "off"


@dataclass(frozen=True)
class RoundRules:
    """When a round starts and closes, what an update must satisfy, and how updates combine.

    ``min_clients`` connected clients start a round (0: the strategy's ``clients_per_round``);
    ``min_updates`` accepted updates make a round count; ``deadline_s`` is how long a round waits
    for updates; ``close_after`` (0: off) closes the round as soon as that many updates are
    accepted, which with a ``clients_per_round`` above it is over-selection: the slowest sampled
    clients no longer hold the round up (they are ``late``, their work is wasted); a round
    that gets too few updates is retried up to ``max_attempts`` times in all. ``clip``
    (:class:`ClipMode`) with ``clip_norm`` (the absolute bound) and ``norm_multiplier`` (the
    adaptive bound's multiple of the median norm, also the guard's and the norm filter's)
    bounds each update. ``aggregation`` picks the rule that combines updates
    (:class:`lpfl.strategy.Aggregation`; ``trim_fraction`` is the trimmed mean's).
    ``max_accuracy_drop`` (a fraction: 0.05 is 5 points) refuses a round's new global state
    whose evaluated ``accuracy`` is more than that below the last committed state's; the
    default, 1, never refuses, and only then may an adapter skip evaluating some rounds.
    ``task_encoding`` encodes the global state sent to clients, ``update_encoding`` is what
    clients must reply with (``fp32``, ``fp16`` or ``int8``). ``privacy``
    (:class:`lpfl.privacy.PrivacyRules`) turns on secure aggregation and differential privacy;
    both need ``aggregation = "fedavg"`` (a robust rule needs every single update), secure
    aggregation needs ``clip`` other than ``"adaptive"`` (the server never sees an update's
    norm) and ``min_updates`` >= 2 (a sum of one update is that update), differential privacy
    needs ``clip = "absolute"`` (``clip_norm`` is the sensitivity).
    """

    min_clients: int = 0
    min_updates: int = 1
    deadline_s: float = 120.0
    close_after: int = 0
    clip: ClipMode = ClipMode.ADAPTIVE
    clip_norm: float = 0.0
    norm_multiplier: float = 3.0
    aggregation: Aggregation = Aggregation.FEDAVG
    trim_fraction: float = 0.2
    max_attempts: int = 3
    max_accuracy_drop: float = 1.0
    task_encoding: str = "fp32"
    update_encoding: str = "fp32"
    privacy: PrivacyRules = field(default_factory=PrivacyRules)

    def __post_init__(self) -> None:
        checks = (
            (self.min_clients >= 0, f"min_clients={self.min_clients} must be >= 0 "
             "(0 waits for clients_per_round clients)"),
            (self.min_updates >= 1, f"min_updates={self.min_updates} must be >= 1"),
            (0 < self.deadline_s < math.inf, f"deadline_s={self.deadline_s} must be > 0"),
            (self.close_after == 0 or self.close_after >= self.min_updates,
             f"close_after={self.close_after} must be 0 (off) or >= min_updates="
             f"{self.min_updates}: a round closed with fewer updates would only fail"),
            (0 <= self.clip_norm < math.inf, f"clip_norm={self.clip_norm} must be >= 0"),
            ((self.clip is ClipMode.ABSOLUTE) == (self.clip_norm > 0),
             f"clip_norm={self.clip_norm} goes with clip = \"absolute\" (and only with it): "
             "set both, or neither"),
            (1 <= self.norm_multiplier < math.inf,
             f"norm_multiplier={self.norm_multiplier} must be >= 1"),
            (0 <= self.trim_fraction < 0.5,
             f"trim_fraction={self.trim_fraction} must be in [0, 0.5)"),
            (self.max_attempts >= 1, f"max_attempts={self.max_attempts} must be >= 1"),
            (0 <= self.max_accuracy_drop <= 1,
             f"max_accuracy_drop={self.max_accuracy_drop} must be in [0, 1] (1: off)"),
            (self.task_encoding in ENCODINGS,
             f"task_encoding={self.task_encoding!r}: use one of {', '.join(ENCODINGS)}"),
            (self.update_encoding in ENCODINGS,
             f"update_encoding={self.update_encoding!r}: use one of {', '.join(ENCODINGS)}"),
            *self._privacy_checks(),
        )
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"server.round.{message}")

    def _privacy_checks(self) -> tuple[tuple[bool, str], ...]:
        """What secure aggregation and differential privacy need of the other rules."""
        privacy = self.privacy
        wanted = [name for name, on in (("secure aggregation", privacy.secure_aggregation),
                                         ("differential privacy", privacy.differential)) if on]
        return (
            (not wanted or self.aggregation is Aggregation.FEDAVG,
             f"aggregation={self.aggregation.value!r} cannot run with {' and '.join(wanted)}: "
             "a robust rule needs every single update, which secure aggregation hides and "
             "differential privacy bounds by one sum; use aggregation = \"fedavg\""),
            (not privacy.secure_aggregation or self.clip is not ClipMode.ADAPTIVE,
             "clip=\"adaptive\" needs each update's norm, which secure aggregation hides from "
             "the server: use clip = \"absolute\" with clip-norm (clients then clip "
             "themselves) or clip = \"off\""),
            (not privacy.secure_aggregation or self.close_after == 0,
             f"close_after={self.close_after}: secure aggregation cannot close a round early, "
             "its masking steps need every client that advertised keys; set close-after = 0"),
            (not privacy.secure_aggregation or self.min_updates >= 2,
             f"min_updates={self.min_updates}: secure aggregation needs min-updates >= 2, a "
             "sum of one update is that update"),
            (not privacy.differential or self.clip is ClipMode.ABSOLUTE,
             f"clip={self.clip.value!r}: differential privacy needs clip = \"absolute\" with "
             "clip-norm > 0, the bound every update is clipped to"),
        )

    @property
    def guards_accuracy(self) -> bool:
        """Whether every round's new global state is evaluated before it is committed."""
        return self.max_accuracy_drop < 1

    def strategy(self, base: FedAvg) -> FedAvg:
        """``base``'s sampling and task settings, combining updates by :attr:`aggregation`."""
        return make_strategy(self.aggregation, base.clients_per_round, base.seed,
                             base.round_settings, trim_fraction=self.trim_fraction,
                             norm_multiplier=self.norm_multiplier)


class Phase(enum.Enum):
    WAITING = "waiting"
    TRAINING = "training"
    SHARING = "sharing"
    MASKING = "masking"
    UNMASKING = "unmasking"
    EVALUATING = "evaluating"
    FINISHED = "finished"
    ABORTED = "aborted"


# Events: what the adapter tells the machine.


@dataclass(frozen=True)
class ClientJoined:
    """A client authenticated and said hello."""

    client_id: str
    capabilities: Mapping[str, Any]


@dataclass(frozen=True)
class ClientLeft:
    """A client's connection closed, for whatever reason."""

    client_id: str


@dataclass(frozen=True)
class UpdateReceived:
    """A whole, well-formed update message arrived; its tensors are not yet checked."""

    update: wire.Update


@dataclass(frozen=True)
class SecAggReceived:
    """A secure-aggregation message from a client arrived whole (keys, shares, a masked input,
    revealed shares); nothing in it is checked beyond the wire schema."""

    message: wire.Message


@dataclass(frozen=True)
class ClientFailed:
    """A client sent an error message instead of an update."""

    error: wire.Error


@dataclass(frozen=True)
class ClientRefused:
    """The adapter refused a message from a client (a bad frame, a payload over the limit, an
    upload that stalled) and sent it the error ``code``."""

    client_id: str
    code: str
    reason: str


@dataclass(frozen=True)
class DeadlinePassed:
    """The timer from a :class:`StartTimer` action fired."""

    round: int
    attempt: int
    stage: int = 0


@dataclass(frozen=True)
class RoundEvaluated:
    """The adapter evaluated the state of a :class:`RoundClosed` action: ``metrics`` (with
    ``accuracy`` when ``max_accuracy_drop`` is set; empty if the adapter skipped evaluating)."""

    round: int
    metrics: Mapping[str, float]


@dataclass(frozen=True)
class RoundRecorded:
    """The adapter finished a :class:`RoundCommitted` action (checkpointed and recorded)."""

    round: int


Event = (ClientJoined | ClientLeft | UpdateReceived | SecAggReceived | ClientFailed | ClientRefused
         | DeadlinePassed | RoundEvaluated | RoundRecorded)


# Actions: what the machine asks the adapter to do, in order.


@dataclass(frozen=True)
class Send:
    """Send ``message`` to ``client_id`` (drop it if that client is gone)."""

    client_id: str
    message: wire.Message


@dataclass(frozen=True)
class StartTimer:
    """Report :class:`DeadlinePassed` for this round, attempt and stage after ``seconds``
    (stage 0 is training; 1-3 are the secure-aggregation steps after it). A new timer
    replaces the previous one."""

    round: int
    attempt: int
    seconds: float
    stage: int = 0


@dataclass(frozen=True)
class RoundClosed:
    """A round closed with enough updates: evaluate ``global_state`` and report
    :class:`RoundEvaluated`. ``train_metrics`` are the metrics of the updates in the new state,
    combined by the rule of :mod:`lpfl.metrics`. ``refused`` says why the norm guard kept the
    previous global state (empty when the new one passed); with ``max_accuracy_drop`` set, a
    state that passed is proposed, not yet committed."""

    round: int
    attempt: int
    global_state: Mapping[str, torch.Tensor]
    outcomes: Mapping[str, ClientOutcome]
    train_metrics: Mapping[str, float]
    refused: str = ""
    privacy: Mapping[str, float] = field(default_factory=dict)
    """With differential privacy, ε spent up to this round and what it was computed from
    (:meth:`lpfl.privacy.DpRound.to_dict`); empty otherwise."""


@dataclass(frozen=True)
class RoundCommitted:
    """The verdict on an evaluated round: checkpoint ``global_state`` (the new one, or the last
    good one when ``refused`` says why not), record the round, then report
    :class:`RoundRecorded`. ``eval_metrics`` are ``global_state``'s; ``outcomes`` mark the
    updates of a refused round ``discarded``."""

    round: int
    attempt: int
    global_state: Mapping[str, torch.Tensor]
    outcomes: Mapping[str, ClientOutcome]
    train_metrics: Mapping[str, float]
    eval_metrics: Mapping[str, float]
    refused: str = ""
    privacy: Mapping[str, float] = field(default_factory=dict)

    def record(self, traffic: Mapping[str, Traffic], seconds: float,
               capabilities: Mapping[str, Mapping[str, Any]] | None = None,
               eval_seconds: float = 0.0) -> RoundRecord:
        """The round's record: every client with an outcome or with ``traffic`` (a client that
        moved bytes but was not sampled is :attr:`~lpfl.records.ClientStatus.IDLE`), in id
        order, with the ``capabilities`` of its hello; ``seconds`` the round took, of which
        ``eval_seconds`` evaluating."""
        capabilities = capabilities or {}
        clients = [ClientRecord(cid, self.outcomes.get(cid, ClientOutcome(ClientStatus.IDLE)),
                                traffic.get(cid, Traffic()), dict(capabilities.get(cid, {})))
                   for cid in sorted(set(self.outcomes) | set(traffic))]
        return RoundRecord(self.round, self.attempt, seconds, dict(self.eval_metrics),
                           dict(self.train_metrics), clients, eval_seconds, self.refused,
                           dict(self.privacy))


@dataclass(frozen=True)
class RoundFailed:
    """A round attempt closed with fewer than ``min_updates`` updates; it will be retried."""

    round: int
    attempt: int
    outcomes: Mapping[str, ClientOutcome]
    reason: str


@dataclass(frozen=True)
class RunFinished:
    """Every round is recorded, or the privacy budget allows no more (then ``reason`` says so;
    it is empty when every round ran); ``global_state`` is the final one."""

    global_state: Mapping[str, torch.Tensor]
    reason: str = ""


@dataclass(frozen=True)
class RunAborted:
    """A round failed ``max_attempts`` times; the run stops with the last recorded state."""

    reason: str


Action = Send | StartTimer | RoundClosed | RoundCommitted | RoundFailed | RunFinished | RunAborted


@dataclass
class _Round:
    """Bookkeeping of the round attempt in progress."""

    number: int
    attempt: int
    sampled: frozenset[str]
    pending: set[str]
    acc: Accumulator
    outcomes: dict[str, ClientOutcome] = field(default_factory=dict)
    masked: secagg.MaskedSum | None = None
    """The secure-aggregation steps' state, when the round uses it."""
    stage: int = 0
    """0 while training; 1-3 in the secure-aggregation steps (sharing, masking, unmasking)."""
    release: DpRound | None = None
    """What the round releases to the privacy accountant, with differential privacy."""


class RoundMachine:
    """Drives ``rounds`` rounds of ``strategy`` from ``global_state``; see the module docstring.

    ``first_round`` > 1 resumes a run whose earlier rounds are already recorded; ``median_norm``
    is then the median accepted update norm of the last recorded round (:func:`median_norm`),
    the reference of adaptive clipping. ``reference_metrics`` is the evaluation of
    ``global_state`` (of the initial state, or the last recorded round's): the accuracy guard's
    first reference, which adapters give when ``max_accuracy_drop`` is set (without one the
    first evaluated round is committed as it is). Updates are combined by
    ``rules.strategy(strategy)``. Feed events to :meth:`handle` and carry out the returned
    actions in order.
    :meth:`screen_update` lets the adapter refuse an update from its header alone, before its
    payload is read.

    With differential privacy, ``privacy_spent`` are the releases of the rounds already recorded
    (from their records' ``privacy``, on a resume), so ε goes on from where it was; ``noise``
    draws the noise (by default a generator seeded from the operating system: never from the
    run's seed).
    """

    def __init__(
        self,
        strategy: FedAvg,
        global_state: Mapping[str, torch.Tensor],
        rules: RoundRules,
        rounds: int,
        first_round: int = 1,
        median_norm: float | None = None,
        reference_metrics: Mapping[str, float] | None = None,
        privacy_spent: Sequence[DpRound] = (),
        noise: np.random.Generator | None = None,
    ) -> None:
        if not global_state:
            raise ConfigError("the initial global state is empty: there is nothing to train")
        if rounds < 1 or first_round < 1:
            raise ConfigError(f"rounds={rounds} must be >= 1 and first_round={first_round} >= 1")
        self.strategy = rules.strategy(strategy)
        self.rules = rules
        self.median_norm = median_norm
        self.rounds = rounds
        self.global_state = {k: v.detach().to("cpu", torch.float32).clone()
                             for k, v in global_state.items()}
        self.round = first_round
        self.attempt = 1
        self.phase = Phase.FINISHED if first_round > rounds else Phase.WAITING
        self.clients: dict[str, Mapping[str, Any]] = {}
        self.committed_metrics: dict[str, float] = dict(reference_metrics or {})
        """The evaluation of the committed global state, as last reported."""
        self._current: _Round | None = None
        self._closed: RoundClosed | None = None
        """The round awaiting its evaluation."""
        self._proposed: dict[str, torch.Tensor] | None = None
        """Its new global state, while the accuracy guard has not judged it."""
        privacy = rules.privacy
        if privacy.secure_aggregation:
            per_round = self.strategy.clients_per_round
            if per_round > MAX_SECAGG_CLIENTS:
                raise ConfigError(f"federation.clients_per_round={per_round}: secure "
                                  f"aggregation runs rounds of at most {MAX_SECAGG_CLIENTS} "
                                  "clients")
            self._masking_params(per_round)
        self.accountant: Accountant | None = None
        """ε spent so far, with differential privacy."""
        if privacy.differential:
            require_accountant()
            self.accountant = Accountant(privacy.delta, privacy.sampling_amplification,
                                         privacy_spent)
        self._noise = noise if noise is not None else noise_rng()

    @property
    def min_clients(self) -> int:
        return self.rules.min_clients or self.strategy.clients_per_round

    def max_update_bytes(self) -> int:
        """The largest update payload worth reading: the global state in the run's update
        encoding, plus room for int8 scales whose text length varies. It encodes the whole
        state, so call it once per run."""
        encoded = encode_tensors(self.global_state, self.rules.update_encoding)
        return len(encoded) + 64 * len(self.global_state) + 1024

    def max_masked_bytes(self) -> int:
        """The largest ``masked_input`` payload worth reading (0 without secure aggregation):
        4 bytes a value of :func:`lpfl.secagg.vector_length`, plus its safetensors header."""
        if not self.rules.privacy.secure_aggregation:
            return 0
        return 4 * secagg.vector_length(self.global_state) + 1024

    def _masking_params(self, sampled: int) -> wire.MaskingParams:
        """The secure-aggregation rules of an attempt that sampled ``sampled`` clients."""
        privacy, rules = self.rules.privacy, self.rules
        weight = 1 if privacy.differential else privacy.max_weight
        threshold = privacy.threshold_for(sampled)
        try:
            bits = secagg.scale_bits(max(sampled, 2), weight, privacy.clip_range)
        except ValueError as exc:
            raise ConfigError(f"server.round.privacy: {exc}; lower clip-range or "
                              "max-weight") from None
        clip_norm = rules.clip_norm if rules.clip is ClipMode.ABSOLUTE else 0.0
        noise = privacy.sum_noise_std(clip_norm) / math.sqrt(threshold) \
            if privacy.differential else 0.0
        return wire.MaskingParams(threshold, bits, privacy.clip_range, weight, clip_norm, noise)

    def handle(self, event: Event) -> list[Action]:
        """Apply one event; return the actions it causes, to be carried out in order."""
        match event:
            case ClientJoined(client_id, capabilities):
                return self._joined(client_id, capabilities)
            case ClientLeft(client_id):
                self.clients.pop(client_id, None)
                return self._settle(client_id, ClientOutcome(ClientStatus.DROPPED))
            case UpdateReceived(update):
                return self._update(update)
            case SecAggReceived(message):
                return self._secagg(message)
            case ClientFailed(error):
                return self._failed(error)
            case ClientRefused(client_id, code, reason):
                return self._settle(client_id, ClientOutcome(ClientStatus.REJECTED, code=code,
                                                             reason=reason))
            case DeadlinePassed(round_number, attempt, stage):
                return self._deadline(round_number, attempt, stage)
            case RoundEvaluated(round_number, metrics):
                return self._evaluated(round_number, metrics)
            case RoundRecorded(round_number):
                return self._recorded(round_number)
        raise TypeError(f"not a protocol event: {event!r}")

    def screen_update(self, client_id: str, round_number: int,
                      message_type: str | None = None) -> wire.Error | None:
        """The error to send if a reply for ``round_number`` from ``client_id`` is refused now,
        or ``None`` if it would be considered; with ``message_type``, also if the round expects
        another type now (an ``update``, or the secure-aggregation step's message)."""
        current = self._current
        if round_number < self.round:
            return self._error(client_id, wire.E_STALE_ROUND,
                               f"round {round_number} is closed; the current round is "
                               f"{self.round}")
        if round_number > self.round:
            return self._error(client_id, wire.E_WRONG_ROUND,
                               f"round {round_number} has not started; the current round is "
                               f"{self.round}")
        if current is None:
            return self._error(client_id, wire.E_LATE_UPDATE,
                               f"round {round_number} is not taking updates now (it is "
                               f"{self.phase.value})")
        if client_id not in current.sampled:
            return self._error(client_id, wire.E_NOT_SAMPLED,
                               f"client {client_id} was not sampled for round {round_number}")
        if client_id not in current.pending:
            return self._error(client_id, wire.E_DUPLICATE_UPDATE,
                               f"client {client_id} already replied in round {round_number}")
        expected = _EXPECTED[current.stage] if current.masked is not None else wire.UPDATE
        if message_type is not None and message_type != expected:
            return self._error(client_id, wire.E_UNEXPECTED,
                               f"round {round_number} expects {expected} from {client_id} now, "
                               f"not {message_type}")
        return None

    def _refused(self, client_id: str, refusal: wire.Error) -> list[Action]:
        """Send a screening refusal; a message of the wrong type ends the client's turn."""
        actions: list[Action] = [Send(client_id, refusal)]
        if refusal.code == wire.E_UNEXPECTED:
            actions += self._settle(client_id, ClientOutcome(
                ClientStatus.REJECTED, code=refusal.code, reason=refusal.reason))
        return actions

    def _error(self, client_id: str, code: str, reason: str) -> wire.Error:
        return wire.Error.of(self.round, client_id, code, reason)

    def _joined(self, client_id: str, capabilities: Mapping[str, Any]) -> list[Action]:
        self.clients[client_id] = capabilities
        ack = wire.Ack(self.round, client_id, wire.HELLO,
                       {"round": self.round, "rounds": self.rounds, "phase": self.phase.value})
        actions: list[Action] = [Send(client_id, ack)]
        if self.phase is Phase.FINISHED:
            actions.append(Send(client_id, wire.Bye(self.round, client_id, "the run is finished")))
        elif self.phase is Phase.WAITING:
            actions += self._start()
        return actions

    def _start(self) -> list[Action]:
        """Start the current round attempt if enough clients are connected."""
        if len(self.clients) < self.min_clients:
            logger.info("round %d waits for clients: %d of %d connected", self.round,
                        len(self.clients), self.min_clients)
            return []
        plan = self.strategy.configure(self.round, sorted(self.clients))
        release = None
        if self.accountant is not None:
            release = DpRound(self.rules.privacy.noise_multiplier, len(self.clients), len(plan))
            budget = self.rules.privacy.epsilon_budget
            then = self.accountant.epsilon(release)
            if budget and then > budget:
                return self._budget_spent(then)
        params = (self._masking_params(len(plan)) if self.rules.privacy.secure_aggregation
                  else None)
        payload = encode_tensors(self.global_state, self.rules.task_encoding)
        self._current = _Round(self.round, self.attempt, frozenset(plan), set(plan),
                               self.strategy.start_aggregation(), release=release)
        if params is not None:
            self._current.masked = secagg.MaskedSum(
                self.round, params, secagg.vector_length(self.global_state))
        self.phase = Phase.TRAINING
        logger.info("round %d (attempt %d) starts with %s", self.round, self.attempt,
                    ", ".join(sorted(plan)))
        actions: list[Action] = [
            Send(cid, wire.Task(self.round, cid, payload, settings, self.rules.update_encoding,
                                self.rules.deadline_s, params))
            for cid, settings in plan.items()
        ]
        actions.append(StartTimer(self.round, self.attempt, self.rules.deadline_s))
        return actions

    def _budget_spent(self, then: float) -> list[Action]:
        """End the run before a round that would spend past the privacy budget."""
        assert self.accountant is not None
        privacy = self.rules.privacy
        reason = (f"the privacy budget is spent: round {self.round} would take ε from "
                  f"{self.accountant.epsilon():.4g} to {then:.4g}, past epsilon_budget="
                  f"{privacy.epsilon_budget:g} (δ={privacy.delta:g})")
        logger.warning("%s; the run ends after round %d", reason, self.round - 1)
        self.phase = Phase.FINISHED
        return [*self._goodbye(reason), RunFinished(self.global_state, reason)]

    def _update(self, update: wire.Update) -> list[Action]:
        cid = update.client_id
        refusal = self.screen_update(cid, update.round, wire.UPDATE)
        if refusal is not None:
            return self._refused(cid, refusal)
        assert self._current is not None
        try:
            outcome = self._fold(update, self._current.acc)
        except (PayloadError, InvalidUpdate) as exc:
            code, reason = wire.E_INVALID_UPDATE, str(exc)
            logger.warning("round %d: update from %s rejected: %s", update.round, cid, exc)
            actions: list[Action] = [Send(cid, self._error(cid, code, reason))]
            return actions + self._settle(cid, ClientOutcome(ClientStatus.REJECTED, code=code,
                                                             reason=reason))
        ack = wire.Ack(update.round, cid, wire.UPDATE,
                       {"clipped": outcome.clipped, "update_norm": outcome.update_norm})
        return [Send(cid, ack), *self._settle(cid, outcome)]

    def _fold(self, update: wire.Update, acc: Accumulator) -> ClientOutcome:
        """Decode and check the update (:func:`lpfl.validation.check_update`), clip it, fold
        it into ``acc``."""
        state = decode_tensors(update.tensors)
        check_update(state, self.global_state, update.num_examples, update.metrics)
        norm = delta_norm(state, self.global_state)
        bound = self.clip_bound()
        clipped = bound is not None and norm > bound
        if bound is not None and clipped:
            state = clip_delta(state, self.global_state, norm, bound)
        # Differential privacy averages with equal weights: an example count would scale one
        # client's influence past the clip bound.
        weight = 1 if self.rules.privacy.differential else update.num_examples
        self.strategy.fold(acc, ClientUpdate(update.client_id, state, weight, update.metrics))
        return ClientOutcome(ClientStatus.UPDATED, update.num_examples, dict(update.metrics),
                             norm, clipped)

    def clip_bound(self) -> float | None:
        """The bound on an update's norm in the current attempt; ``None``: not clipped."""
        match self.rules.clip:
            case ClipMode.ABSOLUTE:
                return self.rules.clip_norm
            case ClipMode.ADAPTIVE if self.median_norm:
                return self.rules.norm_multiplier * self.median_norm
        return None

    def _settle(self, client_id: str, outcome: ClientOutcome | None) -> list[Action]:
        """Record the reply (or silence) of a pending client, unless its update is already in
        the round (a secure-aggregation survivor's later steps); move on if none is left."""
        current = self._current
        if current is None or client_id not in current.pending:
            return []
        current.pending.discard(client_id)
        known = current.outcomes.get(client_id)
        if outcome is not None and not (known is not None and known.status.accepted):
            current.outcomes[client_id] = outcome
        close_after = self.rules.close_after
        if (current.pending and close_after and current.masked is None
                and current.acc.count >= close_after):
            logger.info("round %d: %d updates in, closing without %s", current.number,
                        current.acc.count, ", ".join(sorted(current.pending)))
            for cid in current.pending:
                current.outcomes[cid] = ClientOutcome(ClientStatus.LATE)
            current.pending.clear()
        return [] if current.pending else self._advance()

    def _secagg(self, message: wire.Message) -> list[Action]:
        """One client's message of the secure-aggregation step in progress."""
        cid = message.client_id
        refusal = self.screen_update(cid, message.round, message.TYPE)
        if refusal is not None:
            return self._refused(cid, refusal)
        current = self._current
        assert current is not None and current.masked is not None
        outcome = None
        try:
            match message:
                case wire.AdvertiseKeys():
                    current.masked.add_keys(message)
                case wire.ShareKeys():
                    current.masked.add_shares(message)
                case wire.MaskedInput():
                    current.masked.add_input(message)
                    outcome = ClientOutcome(ClientStatus.UPDATED, metrics=dict(message.metrics),
                                            masked=True)
                case wire.UnmaskShares():
                    current.masked.add_revealed(message)
        except secagg.SecAggError as exc:
            logger.warning("round %d: %s from %s refused: %s", message.round, message.TYPE, cid,
                           exc)
            error = self._error(cid, wire.E_INVALID_UPDATE, str(exc))
            return [Send(cid, error), *self._settle(cid, ClientOutcome(
                ClientStatus.REJECTED, code=error.code, reason=error.reason))]
        return self._settle(cid, outcome)

    def _advance(self) -> list[Action]:
        """Every participant of the step in progress replied (or is out): go to the next
        secure-aggregation step, or close the round."""
        current = self._current
        assert current is not None
        masked = current.masked
        if masked is None:
            return self._close()
        threshold = masked.params.threshold
        messages: Sequence[wire.Message]
        match current.stage:
            case 0:
                have, what, messages = len(masked.keys), "advertised keys", masked.key_messages()
            case 1:
                messages = masked.share_messages()
                have, what = len(masked.sharers), "shared keys"
            case 2:
                threshold = max(threshold, self.rules.min_updates)
                have, what, messages = len(masked.inputs), "sent masked inputs", \
                    masked.unmask_messages()
            case _:
                try:
                    unmasked = masked.result()
                except secagg.SecAggError as exc:
                    return self._fail(current, dict(sorted(current.outcomes.items())),
                                      f"round {current.number} attempt {current.attempt} could "
                                      f"not be unmasked: {exc}")
                return self._close(unmasked)
        if have < threshold:
            return self._fail(current, dict(sorted(current.outcomes.items())),
                              f"round {current.number} attempt {current.attempt}: {have} "
                              f"clients {what}, fewer than the {threshold} needed")
        current.stage += 1
        current.pending = {m.client_id for m in messages}
        self.phase = _STAGE_PHASES[current.stage]
        logger.info("round %d: %d clients %s; %s", current.number, have, what, self.phase.value)
        deadline = self.rules.privacy.phase_deadline_s
        return [*(Send(m.client_id, m) for m in messages),
                StartTimer(current.number, current.attempt, deadline, current.stage)]

    def _failed(self, error: wire.Error) -> list[Action]:
        """A client's error counts as its reply only if it says its training failed in the
        current round; anything else it reports is logged."""
        current_reply = self.screen_update(error.client_id, error.round) is None
        if error.code != wire.E_TRAINING_FAILED or not current_reply:
            logger.warning("client %s reports %s in round %d: %s", error.client_id, error.code,
                           error.round, error.reason)
            return []
        logger.info("client %s failed round %d: %s", error.client_id, error.round, error.reason)
        return self._settle(error.client_id, ClientOutcome(ClientStatus.FAILED, code=error.code,
                                                           reason=error.reason))

    def _deadline(self, round_number: int, attempt: int, stage: int = 0) -> list[Action]:
        current = self._current
        if current is None or (current.number, current.attempt, current.stage) != (
                round_number, attempt, stage):
            return []
        logger.info("round %d deadline passed; no reply from %s", round_number,
                    ", ".join(sorted(current.pending)))
        for cid in current.pending:
            known = current.outcomes.get(cid)
            if known is None or not known.status.accepted:
                current.outcomes[cid] = ClientOutcome(ClientStatus.TIMED_OUT)
        current.pending.clear()
        return self._advance()

    def _close(self, unmasked: secagg.Unmasked | None = None) -> list[Action]:
        current = self._current
        assert current is not None
        self._current = None
        outcomes = dict(sorted(current.outcomes.items()))
        norms = [o.update_norm for o in outcomes.values()
                 if o.status is ClientStatus.UPDATED and not o.masked]
        if norms:
            self.median_norm = statistics.median(norms)
        if unmasked is not None:
            count = sum(o.status is ClientStatus.UPDATED for o in outcomes.values())
            proposed = unmasked.mean_state(self.global_state)
        else:
            count = current.acc.count
            if count < self.rules.min_updates:
                return self._fail(current, outcomes)
            proposed = self._noised(current.acc.result(), count)
        privacy: dict[str, float] = {}
        if self.accountant is not None and current.release is not None:
            self.accountant.spend(current.release)
            privacy = current.release.to_dict(self.accountant.epsilon(), self.accountant.delta)
            logger.info("round %d: ε = %.4g for δ = %g", current.number, privacy["epsilon"],
                        self.accountant.delta)
        refused, bound = self._guard(proposed, norms)
        if refused:
            logger.warning("round %d: the aggregate is refused (%s); keeping the last good "
                           "global state", current.number, refused)
            outcomes = {cid: _discarded(o, bound) for cid, o in outcomes.items()}
        elif self.rules.guards_accuracy:
            self._proposed = proposed
        else:
            self.global_state = proposed
        self.phase = Phase.EVALUATING
        logger.info("round %d closed with %d updates", current.number, count)
        self._closed = RoundClosed(current.number, current.attempt,
                                   self.global_state if self._proposed is None
                                   else self._proposed, outcomes,
                                   _train_metrics(outcomes), refused, privacy)
        return [self._closed]

    def _noised(self, mean: dict[str, torch.Tensor], count: int) -> dict[str, torch.Tensor]:
        """With differential privacy, ``mean`` (of ``count`` clipped updates) plus the noise
        of the sum divided by ``count``; ``mean`` itself otherwise."""
        privacy = self.rules.privacy
        if not privacy.differential:
            return mean
        std = privacy.sum_noise_std(self.rules.clip_norm) / count
        return {name: (tensor.double() + torch.from_numpy(
                    gaussian_noise(self._noise, tensor.numel(), std)).reshape(tensor.shape)
                       ).to(torch.float32)
                for name, tensor in mean.items()}

    def _evaluated(self, round_number: int, metrics: Mapping[str, float]) -> list[Action]:
        """Judge a proposed state by its evaluation; commit it or keep the last good one."""
        closed = self._closed
        if self.phase is not Phase.EVALUATING or closed is None or closed.round != round_number:
            raise ValueError(f"round {round_number} was evaluated while the machine is "
                             f"{self.phase.value} in round {self.round}")
        self._closed = None
        refused, outcomes, evaluation = closed.refused, closed.outcomes, dict(metrics)
        if self._proposed is not None:
            refused = self._accuracy_guard(metrics)
            if refused:
                logger.warning("round %d: the new global state is refused (%s); keeping the "
                               "last good one", round_number, refused)
                outcomes = {cid: _discarded(o, math.inf) for cid, o in outcomes.items()}
                evaluation = dict(self.committed_metrics)
            else:
                self.global_state = self._proposed
            self._proposed = None
        self.committed_metrics = evaluation
        return [RoundCommitted(closed.round, closed.attempt, self.global_state, outcomes,
                               _train_metrics(outcomes), evaluation, refused, closed.privacy)]

    def _accuracy_guard(self, metrics: Mapping[str, float]) -> str:
        """Why a proposed state evaluated as ``metrics`` must not be committed ("" if it may)."""
        if "accuracy" not in metrics:
            raise ConfigError("server.round.max_accuracy_drop needs an evaluation that reports "
                              f"'accuracy'; this one reports {sorted(metrics)}")
        accuracy, last = float(metrics["accuracy"]), self.committed_metrics.get("accuracy")
        drop = self.rules.max_accuracy_drop
        if last is None or not last - accuracy > drop:
            return ""
        return (f"its accuracy {accuracy:.4g} is {last - accuracy:.4g} below the last committed "
                f"state's {last:.4g}, more than max_accuracy_drop={drop:g}")

    def _guard(self, proposed: Mapping[str, torch.Tensor],
               norms: Sequence[float]) -> tuple[str, float]:
        """Why ``proposed`` must not become the global state ("" if it may), and the bound on
        its step from the current one: ``norm_multiplier`` times the attempt's median update
        norm (adaptive), or times ``clip_norm`` (absolute; a robust rule can step a little
        beyond the bound of each update); no bound when clipping is off."""
        if not all(bool(torch.isfinite(t).all()) for t in proposed.values()):
            return "the aggregate is not finite", math.inf
        if self.rules.privacy.differential:
            return "", math.inf  # the noise, not the updates, sets the step's norm
        match self.rules.clip:
            case ClipMode.ADAPTIVE:
                bound = self.rules.norm_multiplier * statistics.median(norms)
            case ClipMode.ABSOLUTE:
                bound = self.rules.norm_multiplier * self.rules.clip_norm
            case ClipMode.OFF:
                return "", math.inf
        step = delta_norm(proposed, self.global_state)
        if bound > 0 and step > bound:
            return f"its step {step:.4g} exceeds the bound {bound:.4g}", bound
        return "", bound

    def _fail(self, current: _Round, outcomes: Mapping[str, ClientOutcome],
              reason: str = "") -> list[Action]:
        self._current = None
        reason = reason or (f"round {current.number} attempt {current.attempt} got "
                            f"{current.acc.count} updates, fewer than "
                            f"min_updates={self.rules.min_updates}")
        logger.warning("%s", reason)
        actions: list[Action] = [RoundFailed(current.number, current.attempt, outcomes, reason)]
        if current.attempt >= self.rules.max_attempts:
            self.phase = Phase.ABORTED
            aborted = [Send(cid, self._error(cid, wire.E_ABORTED, reason))
                       for cid in sorted(self.clients)]
            return [*actions, *aborted, *self._goodbye("the run was aborted"), RunAborted(reason)]
        self.attempt += 1
        self.phase = Phase.WAITING
        return actions + self._start()

    def _recorded(self, round_number: int) -> list[Action]:
        if self.phase is not Phase.EVALUATING or round_number != self.round:
            raise ValueError(f"round {round_number} was recorded while the machine is "
                             f"{self.phase.value} in round {self.round}")
        if self._proposed is not None:
            raise ValueError(f"round {round_number}'s new global state awaits its evaluation "
                             "(max_accuracy_drop is set): report RoundEvaluated first")
        self._closed = None
        self.round += 1
        self.attempt = 1
        if self.round > self.rounds:
            self.phase = Phase.FINISHED
            return [*self._goodbye("the run is finished"), RunFinished(self.global_state)]
        self.phase = Phase.WAITING
        return self._start()

    def _goodbye(self, reason: str) -> list[Action]:
        return [Send(cid, wire.Bye(self.round, cid, reason)) for cid in sorted(self.clients)]


_EXPECTED = (wire.ADVERTISE_KEYS, wire.SHARE_KEYS, wire.MASKED_INPUT, wire.UNMASK_SHARES)
"""The message a secure-aggregation round expects from a client in each stage."""
_STAGE_PHASES = (Phase.TRAINING, Phase.SHARING, Phase.MASKING, Phase.UNMASKING)


def median_norm(norms: Sequence[float]) -> float | None:
    """The median of a round's accepted update norms; ``None`` if there are none.
    A resumed server gives it the last recorded round's norms."""
    return statistics.median(norms) if norms else None


def _discarded(outcome: ClientOutcome, bound: float) -> ClientOutcome:
    """An accepted update whose round's aggregate was refused; says if its norm was over the
    bound (the likely cause)."""
    if outcome.status is not ClientStatus.UPDATED:
        return outcome
    reason = (f"update norm {outcome.update_norm:.4g} exceeds the bound {bound:.4g}"
              if outcome.update_norm > bound else "the round's aggregate was refused")
    return dataclasses.replace(outcome, status=ClientStatus.DISCARDED, reason=reason)


def _train_metrics(outcomes: Mapping[str, ClientOutcome]) -> dict[str, float]:
    """The metrics of the updates a round committed, combined by the rule of
    :mod:`lpfl.metrics` (counts summed, the rest example-weighted)."""
    return combine_client_metrics((o.metric_weight, o.metrics) for o in outcomes.values()
                                  if o.status is ClientStatus.UPDATED)
