"""What a round leaves behind: each client's outcome and traffic, and the round's record.

The round machine (:mod:`lpfl.protocol`) decides each sampled client's :class:`ClientOutcome`;
its adapters count the bytes each client moved (:class:`Traffic`) and turn the round's verdict
into one :class:`RoundRecord` (:meth:`lpfl.protocol.RoundCommitted.record`). The websocket server
keeps every record (``results.json``, the checkpoint); the simulation keeps each record's
:meth:`RoundRecord.summary`, the flat row its results and every report (:mod:`lpfl.report`) are
made of. Records are frozen and checked when built: a field out of range raises
:class:`ValueError`.

Bytes are counted in windows: on the server a round's window runs from the previous round's
close to its own, so every byte of a connection lands in exactly one round, including those of
failed attempts and of clients that were connected but not sampled (:attr:`ClientStatus.IDLE`).
``payload_*`` bytes are the tensor payloads; ``wire_*`` bytes are everything the connection read
or wrote, handshake and framing included (:class:`~lpfl.transport.ByteMeter`); the simulation
has no wire and counts payloads only.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from lpfl.metrics import combine_client_metrics, pooled_rate


class ClientStatus(enum.StrEnum):
    """What a client did in a round; ``results.json`` records the value."""

    UPDATED = "updated"
    """Its update was accepted and is part of the new global state."""
    DISCARDED = "discarded"
    """Its update was accepted, but the guard refused the round's aggregate (``reason``)."""
    REJECTED = "rejected"
    """A message of its turn was refused (``code``, ``reason``); its turn ended there."""
    FAILED = "failed"
    """It reported ``training_failed``."""
    DROPPED = "dropped"
    """It disconnected before replying."""
    TIMED_OUT = "timed_out"
    """It had not replied when the deadline passed."""
    LATE = "late"
    """It had not replied when the round closed early with enough updates (over-selection)."""
    IDLE = "idle"
    """Connected, but not sampled."""

    @property
    def accepted(self) -> bool:
        """Whether the client's update passed validation and was folded into the round's
        aggregate (whether or not the guard then kept that aggregate)."""
        return self in (ClientStatus.UPDATED, ClientStatus.DISCARDED)

    @property
    def refused(self) -> bool:
        """Whether the client's turn ended with an error code (its own or the server's)."""
        return self in (ClientStatus.REJECTED, ClientStatus.FAILED)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_numbers(metrics: Mapping[str, float], what: str) -> None:
    for name, value in metrics.items():
        _require(isinstance(name, str) and isinstance(value, int | float)
                 and not isinstance(value, bool) and math.isfinite(value),
                 f"{what}[{name!r}]={value!r} must be a finite number")


@dataclass(frozen=True)
class ClientOutcome:
    """What one sampled client did in a round.

    An accepted update (:attr:`ClientStatus.accepted`) carries its ``num_examples`` (>= 1), its
    ``metrics``, ``update_norm`` (the L2 norm of its change from the global state, before
    clipping) and whether it was ``clipped``; any other outcome carries none of these. A
    ``masked`` update (secure aggregation) was only ever seen summed with the others: it
    carries its metrics, but no ``num_examples``, norm or clipping, which the server never
    learns. A refused turn (:attr:`ClientStatus.refused`) has the error ``code`` (of the
    refused message, or of the client's own failure report); ``reason`` says why a turn was
    refused or failed, or why an accepted update was discarded.
    """

    status: ClientStatus
    num_examples: int = 0
    metrics: Mapping[str, float] = field(default_factory=dict)
    update_norm: float = 0.0
    clipped: bool = False
    code: str = ""
    reason: str = ""
    masked: bool = False

    def __post_init__(self) -> None:
        _require(isinstance(self.status, ClientStatus),
                 f"status {self.status!r} is not a ClientStatus")
        _require(_is_int(self.num_examples), f"num_examples {self.num_examples!r} is not an int")
        _require(isinstance(self.update_norm, int | float) and 0 <= self.update_norm < math.inf,
                 f"update_norm {self.update_norm!r} must be a finite number >= 0")
        _check_numbers(self.metrics, "metrics")
        _require(not self.masked or self.status.accepted,
                 f"a {self.status} outcome has no update, masked or not")
        if self.masked:
            _require(self.num_examples == 0 and self.update_norm == 0 and not self.clipped,
                     "a masked update's num_examples, norm and clipping are unknown: leave "
                     "them 0")
        elif self.status.accepted:
            _require(self.num_examples >= 1, f"an {self.status} outcome needs num_examples >= 1, "
                     f"got {self.num_examples}")
        else:
            _require(self.num_examples == 0 and not self.metrics and self.update_norm == 0
                     and not self.clipped,
                     f"a {self.status} outcome has no update: no examples, metrics, norm or "
                     "clipping")
        _require(bool(self.code) == self.status.refused,
                 f"a {self.status} outcome {'needs' if self.status.refused else 'has no'} "
                 f"error code (got {self.code!r})")

    @property
    def metric_weight(self) -> int:
        """The weight of this client's metrics when a round's are combined
        (:mod:`lpfl.metrics`): its ``num_examples``, or 1 for a masked update."""
        return 1 if self.masked else self.num_examples


@dataclass(frozen=True)
class Traffic:
    """Bytes one client moved in a round: tensor payloads and, over a connection, everything on
    the wire (``uplink``: client to server)."""

    payload_uplink_bytes: int = 0
    payload_downlink_bytes: int = 0
    wire_uplink_bytes: int = 0
    wire_downlink_bytes: int = 0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            _require(_is_int(value) and value >= 0, f"{name}={value!r} must be an int >= 0")

    def __add__(self, other: Traffic) -> Traffic:
        mine, theirs = asdict(self), asdict(other)
        return Traffic(**{name: mine[name] + theirs[name] for name in mine})

    @classmethod
    def total(cls, parts: Iterable[Traffic]) -> Traffic:
        """The sum of ``parts`` (zero for none)."""
        result = cls()
        for part in parts:
            result += part
        return result


_TRAFFIC_KEYS = tuple(f.name for f in fields(Traffic))


@dataclass(frozen=True)
class ClientEmulation:
    """The device and link ``lpfl field`` emulated for a client: profile names, the CPU quota of
    its cgroup (CPUs; None: unthrottled, the device profile has no speed reference) and its
    memory limit (MiB; None: none)."""

    device: str
    link: str
    cpu_quota: float | None = None
    memory_limit_mb: int | None = None

    def __post_init__(self) -> None:
        _require(bool(self.device) and bool(self.link),
                 f"device {self.device!r} and link {self.link!r} must be non-empty")
        _require(self.cpu_quota is None or 0 < self.cpu_quota < math.inf,
                 f"cpu_quota {self.cpu_quota!r} must be a finite number > 0, or None")
        _require(self.memory_limit_mb is None
                 or (_is_int(self.memory_limit_mb) and self.memory_limit_mb >= 1),
                 f"memory_limit_mb {self.memory_limit_mb!r} must be an int >= 1, or None")


@dataclass(frozen=True)
class ClientRecord:
    """One client's part in a round: its outcome, its traffic, and what it said of itself in its
    hello (``cpu_arch``, ``backend``, ``runtime`` versions; empty for a client that left before
    the round closed, and in the simulation); in a field run, the device and link it ran on."""

    client_id: str
    outcome: ClientOutcome
    traffic: Traffic = field(default_factory=Traffic)
    capabilities: Mapping[str, Any] = field(default_factory=dict)
    emulation: ClientEmulation | None = None

    def __post_init__(self) -> None:
        _require(isinstance(self.client_id, str) and bool(self.client_id),
                 f"client_id {self.client_id!r} must be a non-empty string")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON, flat: the id, the outcome's fields (``status`` as its string), the
        traffic's counters, the capabilities, and the emulation where there is one."""
        o = self.outcome
        return {"client_id": self.client_id, "status": o.status.value,
                "num_examples": o.num_examples, "metrics": dict(o.metrics),
                "update_norm": o.update_norm, "clipped": o.clipped, "code": o.code,
                **asdict(self.traffic), "capabilities": dict(self.capabilities),
                "reason": o.reason} | ({"masked": True} if o.masked else {}) | (
            {"emulation": asdict(self.emulation)} if self.emulation is not None else {})

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> ClientRecord:
        """Inverse of :meth:`to_dict`."""
        outcome = ClientOutcome(
            ClientStatus(document["status"]), document.get("num_examples", 0),
            dict(document.get("metrics", {})), document.get("update_norm", 0.0),
            document.get("clipped", False), document.get("code", ""),
            document.get("reason", ""), document.get("masked", False))
        traffic = Traffic(**{name: document.get(name, 0) for name in _TRAFFIC_KEYS})
        emulation = document.get("emulation")
        return cls(document["client_id"], outcome, traffic,
                   dict(document.get("capabilities", {})),
                   ClientEmulation(**emulation) if emulation is not None else None)


@dataclass(frozen=True)
class RoundRecord:
    """A completed round: the evaluation of its global state, the clients' combined training
    metrics (:func:`lpfl.metrics.combine_client_metrics` over the updates it committed), and
    each client's record."""

    round: int
    attempts: int
    seconds: float
    eval_metrics: Mapping[str, float]
    train_metrics: Mapping[str, float]
    clients: Sequence[ClientRecord]
    eval_seconds: float = 0.0
    """Of :attr:`seconds`, the evaluation of the new global state: an instrument of the
    experiment, not a step of training, so reports can leave it out of time to accuracy."""
    refused: str = ""
    """Why a guard (norm or accuracy) refused the round's aggregate and kept the previous global
    state (its clients' updates are then ``discarded``, and :attr:`eval_metrics` are the kept
    state's); empty when the new state was committed."""
    privacy: Mapping[str, float] = field(default_factory=dict)
    """With differential privacy: ``epsilon`` spent up to and including this round for
    ``delta``, and the round's ``noise_multiplier``, ``population`` and ``sampled`` clients
    (:class:`lpfl.privacy.DpRound`); empty otherwise."""

    def __post_init__(self) -> None:
        _require(_is_int(self.round) and self.round >= 0, f"round {self.round!r} must be >= 0")
        _require(_is_int(self.attempts) and self.attempts >= 1,
                 f"attempts {self.attempts!r} must be >= 1")
        _require(self.seconds >= 0 and self.eval_seconds >= 0,
                 f"seconds {self.seconds!r} and eval_seconds {self.eval_seconds!r} must be >= 0")
        ids = [c.client_id for c in self.clients]
        _require(len(ids) == len(set(ids)), f"round {self.round} records a client twice: {ids}")
        _check_numbers(self.privacy, "privacy")

    @property
    def traffic(self) -> Traffic:
        """The bytes of all clients together."""
        return Traffic.total(c.traffic for c in self.clients)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON: the fields, plus the round's byte totals."""
        return {"round": self.round, "attempts": self.attempts, "seconds": self.seconds,
                "eval_metrics": dict(self.eval_metrics),
                "train_metrics": dict(self.train_metrics),
                "clients": [c.to_dict() for c in self.clients],
                "eval_seconds": self.eval_seconds, "refused": self.refused,
                **asdict(self.traffic)} | ({"privacy": dict(self.privacy)} if self.privacy else {})

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> RoundRecord:
        """Inverse of :meth:`to_dict` (the totals are recomputed, not read)."""
        return cls(document["round"], document["attempts"], document["seconds"],
                   dict(document["eval_metrics"]), dict(document["train_metrics"]),
                   [ClientRecord.from_dict(c) for c in document["clients"]],
                   document.get("eval_seconds", 0.0), document.get("refused", ""),
                   dict(document.get("privacy", {})))

    def summary(self, wire: bool = False) -> dict[str, Any]:
        """The round as one flat row, what the simulation's ``results.json`` keeps and the
        reports show: ``accuracy`` and ``teacher_accuracy`` of the evaluation (``None`` where
        the round was not evaluated), payload bytes up and down, the soft-label figures and
        ``train_loss`` of the clients whose update was accepted (combined by the rule of
        :mod:`lpfl.metrics`; rates of counts pooled), which clients those were and which were
        clipped, ``refused`` and ``seconds``; with ``wire``, the bytes on the wire up and
        down too; with differential privacy, ``epsilon`` spent so far."""
        accepted = [c for c in self.clients if c.outcome.status.accepted]
        combined = combine_client_metrics((c.outcome.metric_weight, c.outcome.metrics)
                                          for c in accepted)
        traffic = self.traffic
        return {
            "round": self.round,
            "accuracy": self.eval_metrics.get("accuracy"),
            "teacher_accuracy": self.eval_metrics.get("teacher_accuracy"),
            "uplink_bytes": traffic.payload_uplink_bytes,
            "downlink_bytes": traffic.payload_downlink_bytes,
            "soft_labels_added": int(combined.get("soft_labels_added", 0)),
            "soft_label_accuracy": pooled_rate(combined, "soft_label_correct",
                                               "soft_label_checked"),
            "teacher_pool_accuracy": pooled_rate(combined, "teacher_pool_correct",
                                                 "pool_checked"),
            "student_pool_accuracy": pooled_rate(combined, "student_pool_correct",
                                                 "pool_checked"),
            "gold_share": combined.get("gold_share"),
            "train_loss": combined.get("train_loss"),
            "clients": [c.client_id for c in accepted],
            "clipped": [c.client_id for c in accepted if c.outcome.clipped],
            "refused": self.refused,
            "seconds": self.seconds,
        } | ({"wire_uplink_bytes": traffic.wire_uplink_bytes,
              "wire_downlink_bytes": traffic.wire_downlink_bytes} if wire else {}) | (
            {"epsilon": self.privacy["epsilon"]} if "epsilon" in self.privacy else {})
