"""The wire schema: every message the aggregator and the edge clients exchange, and its framing.

This is the one place a wire type is defined; ``lpfl.server`` and ``lpfl.edge_client`` import it.
It does no I/O: messages become bytes (:meth:`Message.frames`, :meth:`Message.serialize`) and
bytes become messages (:class:`FrameReader`, :func:`parse`). ``docs/protocol.md`` is the prose
version of this module.

A message is one binary string::

    header_length (4 bytes, big-endian)  |  header (UTF-8 JSON)  |  payload (safetensors bytes)

The header is the envelope (``schema_version``, ``type``, ``round``, ``client_id``), the size of
the payload (``payload_bytes``) and the type's own fields (``body``). Only ``task``, ``update`` and
``masked_input`` carry a payload: a tensor state encoded by :mod:`lpfl.tensors`, or a masked
vector (:mod:`lpfl.secagg`). On a websocket the string is cut
into binary frames of at most :data:`MAX_FRAME_BYTES`: the first frame holds the whole header and
up to :data:`CHUNK_BYTES` of payload, each later frame the next chunk, so neither side ever holds a
frame bigger than that and the receiver checks the declared payload size against its limit for the
message type before it stores a single payload byte.

Every check failure raises :class:`WireError` with one of the ``E_*`` codes, the same codes an
``error`` message carries back to the peer. :class:`ByteMeter` defines what "bytes on the wire"
means for the byte accounting: everything a connection reads and writes.
"""

from __future__ import annotations

import binascii
import json
import math
import re
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from lpfl.errors import LpflError
from lpfl.tensors import ENCODINGS

SCHEMA_VERSION = 1
"""Bumped whenever a field changes meaning; peers with another version are refused."""

HELLO = "hello"
TASK = "task"
UPDATE = "update"
ERROR = "error"
ACK = "ack"
BYE = "bye"
ADVERTISE_KEYS = "advertise_keys"
PUBLIC_KEYS = "public_keys"
SHARE_KEYS = "share_keys"
MASKED_INPUT = "masked_input"
UNMASK = "unmask"
UNMASK_SHARES = "unmask_shares"
SECAGG_TYPES = (ADVERTISE_KEYS, PUBLIC_KEYS, SHARE_KEYS, MASKED_INPUT, UNMASK, UNMASK_SHARES)
"""The secure-aggregation extension's messages (:mod:`lpfl.secagg`), in the order of a round."""
MESSAGE_TYPES = (HELLO, TASK, UPDATE, ERROR, ACK, BYE, *SECAGG_TYPES)

E_BAD_FRAME = "bad_frame"
"""The bytes are not a message: too short, a bad header length, a header that is not JSON."""
E_BAD_MESSAGE = "bad_message"
"""The header is JSON but a field is missing, of the wrong type or out of range."""
E_UNSUPPORTED_SCHEMA = "unsupported_schema"
"""The peer speaks another :data:`SCHEMA_VERSION`; fatal, upgrade one side."""
E_TOO_LARGE = "too_large"
"""The declared payload is bigger than the receiver accepts for this message type."""
E_UNAUTHORIZED = "unauthorized"
"""The hello names another client than the one the token authenticated; fatal."""
E_UNEXPECTED = "unexpected"
"""A message type the receiver does not accept now (an update before hello, a task sent to
the server)."""
E_STALE_ROUND = "stale_round"
"""An update for a round that has already closed."""
E_LATE_UPDATE = "late_update"
"""An update for the current round after its deadline passed or it was aggregated."""
E_WRONG_ROUND = "wrong_round"
"""An update for a round that has not started."""
E_NOT_SAMPLED = "not_sampled"
"""An update from a client that was not asked to train this round."""
E_DUPLICATE_UPDATE = "duplicate_update"
"""A second reply from the same client in one round."""
E_INVALID_UPDATE = "invalid_update"
"""The update cannot be aggregated: its tensors do not decode, differ from the global state or
are not finite, or its ``num_examples`` is out of range."""
E_TIMEOUT = "timeout"
"""A message did not arrive (or finish arriving) in time; the connection is closed."""
E_TRAINING_FAILED = "training_failed"
"""Sent by a client whose trainer raised; the round goes on without it."""
E_REPLACED = "replaced"
"""The same client connected again; the older connection is closed."""
E_ABORTED = "aborted"
"""The run stopped before its last round (a round failed too often); fatal, the client must not
report the run as finished."""

ERROR_CODES = (
    E_BAD_FRAME, E_BAD_MESSAGE, E_UNSUPPORTED_SCHEMA, E_TOO_LARGE, E_UNAUTHORIZED, E_UNEXPECTED,
    E_STALE_ROUND, E_LATE_UPDATE, E_WRONG_ROUND, E_NOT_SAMPLED, E_DUPLICATE_UPDATE,
    E_INVALID_UPDATE, E_TIMEOUT, E_TRAINING_FAILED, E_REPLACED, E_ABORTED,
)
FATAL_CODES = frozenset({E_UNSUPPORTED_SCHEMA, E_UNAUTHORIZED, E_ABORTED})
"""Codes after which a client must stop instead of reconnecting: retrying cannot help."""

CLIENT_ID_HEADER = "X-LPFL-Client-Id"
"""HTTP header of the websocket handshake that names the client; the token goes in
``Authorization: Bearer <token>``. Both are checked before the connection is upgraded."""

MAX_HEADER_BYTES = 64 * 1024
"""Largest JSON header accepted, whatever the type."""
CHUNK_BYTES = 64 * 1024
"""Most payload bytes a sender puts in one frame. Small on purpose: websockets' parser keeps the
last frame of an idle connection alive, so the frame size is what each connected client costs the
server between rounds (1 MiB frames made 1,000 idle clients pin ~0.8 GB; see bench/README.md)."""
MAX_FRAME_BYTES = 4 + MAX_HEADER_BYTES + CHUNK_BYTES
"""Largest websocket message either side accepts (its ``max_size``)."""
MAX_QUEUED_FRAMES = 4
"""Frames websockets may buffer per connection before it stops reading the socket (its
``max_queue``): with :data:`MAX_FRAME_BYTES`, a bound on each connection's receive buffer."""
MAX_REASON_CHARS = 1000
"""Longer error reasons and bye reasons are cut to this length by :meth:`Error.of`."""
MAX_ROUND = 2**31 - 1
MAX_EXAMPLES = 2**31 - 1
"""The largest ``num_examples`` an update may claim (checked with the rest of the update by
:func:`lpfl.validation.check_update`)."""

_HEADER_LENGTH = struct.Struct(">I")
_CLIENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class WireError(LpflError):
    """Bytes or fields that break the schema; ``code`` is one of the ``E_*`` constants."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


def _require(condition: bool, code: str, reason: str) -> None:
    if not condition:
        raise WireError(code, reason)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_client_id(client_id: object) -> None:
    """Client ids are 1-64 characters of ``A-Z a-z 0-9 . _ -``, starting with a letter or digit."""
    _require(isinstance(client_id, str) and _CLIENT_ID.fullmatch(client_id) is not None,
             E_BAD_MESSAGE, f"client_id {client_id!r} must be 1-64 characters of A-Z a-z 0-9 . _ -")


def _check_json(value: object, what: str) -> None:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise WireError(E_BAD_MESSAGE, f"{what} is not plain finite JSON: {exc}") from None


def _check_metrics(metrics: Mapping[str, float], what: str) -> None:
    for name, value in metrics.items():
        _require(isinstance(name, str) and _is_number(value) and math.isfinite(value),
                 E_BAD_MESSAGE, f"{what}[{name!r}]={value!r} must be a finite number")


def _field(body: Mapping[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = body.get(name)
    _require(isinstance(value, kind) and not isinstance(value, bool), E_BAD_MESSAGE,
             f"body.{name} is missing or has the wrong type")
    return value


@dataclass(frozen=True)
class Envelope:
    """What every message starts with: its type, the round it belongs to, and the client it is
    from (client to server) or for (server to client)."""

    type: str
    round: int
    client_id: str
    schema_version: int = SCHEMA_VERSION

    def check(self) -> None:
        """Raise :class:`WireError` unless every envelope field is valid."""
        _require(_is_int(self.schema_version), E_BAD_MESSAGE, "schema_version must be an integer")
        _require(self.schema_version == SCHEMA_VERSION, E_UNSUPPORTED_SCHEMA,
                 f"schema version {self.schema_version} is not supported; this side speaks "
                 f"{SCHEMA_VERSION}")
        _require(self.type in MESSAGE_TYPES, E_BAD_MESSAGE,
                 f"unknown message type {self.type!r}; known: {', '.join(MESSAGE_TYPES)}")
        _require(_is_int(self.round) and 0 <= self.round <= MAX_ROUND, E_BAD_MESSAGE,
                 f"round {self.round!r} must be an integer in [0, {MAX_ROUND}]")
        check_client_id(self.client_id)


M = TypeVar("M", bound="Message")


@dataclass(frozen=True)
class Message:
    """Base of the message types: the envelope fields plus type-specific ones.

    Subclasses set ``TYPE`` and implement ``_body``, ``_check_body`` and ``_from_body``. Build
    one, send its :meth:`frames` (they :meth:`check` it first); the receiver gets it back, already
    checked, from :class:`FrameReader` or :func:`parse`.
    """

    TYPE: ClassVar[str]
    round: int
    client_id: str

    @property
    def payload(self) -> bytes:
        """The payload; empty for every type but ``task``, ``update`` and ``masked_input``."""
        return b""

    @property
    def envelope(self) -> Envelope:
        return Envelope(self.TYPE, self.round, self.client_id)

    def _body(self) -> dict[str, Any]:
        raise NotImplementedError

    def _check_body(self) -> None:
        """Check the type's own fields; the payload's presence is checked by :meth:`check`."""
        raise NotImplementedError

    @classmethod
    def _from_body(cls: type[M], envelope: Envelope, body: Mapping[str, Any], payload: bytes) -> M:
        raise NotImplementedError

    def check(self) -> None:
        """Raise :class:`WireError` unless every field is valid; return quietly otherwise."""
        self.envelope.check()
        self._check_body()
        if self.TYPE in _WITH_PAYLOAD:
            _require(len(self.payload) > 0, E_BAD_MESSAGE, f"a {self.TYPE} must carry a payload")

    def header(self) -> bytes:
        """The length-prefixed JSON header, deterministic (sorted keys, no spaces)."""
        self.check()
        document = {
            "schema_version": SCHEMA_VERSION,
            "type": self.TYPE,
            "round": self.round,
            "client_id": self.client_id,
            "payload_bytes": len(self.payload),
            "body": self._body(),
        }
        text = json.dumps(document, sort_keys=True, separators=(",", ":"), allow_nan=False)
        data = text.encode("utf-8")
        _require(len(data) <= MAX_HEADER_BYTES, E_TOO_LARGE,
                 f"{self.TYPE} header is {len(data)} bytes; the limit is {MAX_HEADER_BYTES}")
        return _HEADER_LENGTH.pack(len(data)) + data

    def frames(self, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes | memoryview]:
        """The message cut into websocket frames: header plus the first chunk, then one chunk each.

        Later chunks are views of the payload, so sending a large state costs no copy of it.
        """
        if not 1 <= chunk_bytes <= CHUNK_BYTES:
            raise ValueError(f"chunk_bytes must be in [1, {CHUNK_BYTES}], got {chunk_bytes}")
        view = memoryview(self.payload)
        yield self.header() + bytes(view[:chunk_bytes])
        for start in range(chunk_bytes, len(view), chunk_bytes):
            yield view[start : start + chunk_bytes]

    def serialize(self) -> bytes:
        """The whole message as one byte string (all its frames joined)."""
        return self.header() + self.payload

    @classmethod
    def parse(cls: type[M], data: bytes) -> M:
        """Parse ``data`` as a message of this type; raise :class:`WireError` for anything else."""
        message = parse(data)
        if not isinstance(message, cls):
            raise WireError(E_UNEXPECTED, f"expected a {cls.TYPE} message, got {message.TYPE}")
        return message


@dataclass(frozen=True)
class Hello(Message):
    """Client to server, first message on a connection: who I am and what I run on.

    ``capabilities`` must hold ``backend`` (str: e.g. ``"torch"``, ``"executorch"``),
    ``cpu_arch`` (str), ``memory_bytes`` (int) and ``runtime`` (a map of component to version
    string); any other plain JSON is kept as is. ``round`` is the last round the client trained
    (0 for none), for the server's log.
    """

    TYPE: ClassVar[str] = HELLO
    capabilities: Mapping[str, Any]

    def _body(self) -> dict[str, Any]:
        return {"capabilities": dict(self.capabilities)}

    def _check_body(self) -> None:
        caps = self.capabilities
        _require(isinstance(caps, Mapping), E_BAD_MESSAGE, "capabilities must be a map")
        for key in ("backend", "cpu_arch"):
            _require(isinstance(caps.get(key), str) and bool(caps.get(key)), E_BAD_MESSAGE,
                     f"capabilities.{key} must be a non-empty string")
        memory = caps.get("memory_bytes")
        _require(isinstance(memory, int) and not isinstance(memory, bool) and memory >= 0,
                 E_BAD_MESSAGE,
                 "capabilities.memory_bytes must be a non-negative integer")
        runtime = caps.get("runtime")
        _require(isinstance(runtime, Mapping)
                 and all(isinstance(k, str) and isinstance(v, str) for k, v in runtime.items()),
                 E_BAD_MESSAGE, "capabilities.runtime must map component names to version strings")
        _check_json(dict(caps), "capabilities")

    @classmethod
    def _from_body(cls, envelope: Envelope, body: Mapping[str, Any], payload: bytes) -> Hello:
        return cls(envelope.round, envelope.client_id, _field(body, "capabilities", dict))


@dataclass(frozen=True)
class Task(Message):
    """Server to client: train on this global state for ``round`` and reply before the deadline.

    ``tensors`` (the payload) is the global state as :func:`lpfl.tensors.encode_tensors` bytes,
    ``settings`` the strategy's settings for this client and round (plain JSON),
    ``update_encoding`` how the client must encode its reply, ``deadline_s`` how many seconds the
    round stays open after the task was sent.
    """

    TYPE: ClassVar[str] = TASK
    tensors: bytes
    settings: Mapping[str, Any]
    update_encoding: str
    deadline_s: float
    secure_aggregation: MaskingParams | None = None
    """When set, the client answers with ``advertise_keys`` instead of ``update`` and masks its
    update (:mod:`lpfl.secagg`); absent from the body otherwise."""

    @property
    def payload(self) -> bytes:
        return self.tensors

    def _body(self) -> dict[str, Any]:
        body = {"settings": dict(self.settings), "update_encoding": self.update_encoding,
                "deadline_s": float(self.deadline_s)}
        if self.secure_aggregation is not None:
            body["secure_aggregation"] = self.secure_aggregation.to_dict()
        return body

    def _check_body(self) -> None:
        _require(self.round >= 1, E_BAD_MESSAGE, "a task's round must be >= 1")
        _require(isinstance(self.settings, Mapping), E_BAD_MESSAGE, "settings must be a map")
        _check_json(dict(self.settings), "settings")
        _require(self.update_encoding in ENCODINGS, E_BAD_MESSAGE,
                 f"update_encoding {self.update_encoding!r} is not one of {ENCODINGS}")
        _require(_is_number(self.deadline_s) and 0 < self.deadline_s < math.inf, E_BAD_MESSAGE,
                 f"deadline_s {self.deadline_s!r} must be a positive number")
        if self.secure_aggregation is not None:
            _require(isinstance(self.secure_aggregation, MaskingParams), E_BAD_MESSAGE,
                     "secure_aggregation must be MaskingParams")
            self.secure_aggregation.check()

    @classmethod
    def _from_body(cls, envelope: Envelope, body: Mapping[str, Any], payload: bytes) -> Task:
        params = body.get("secure_aggregation")
        return cls(envelope.round, envelope.client_id, payload, _field(body, "settings", dict),
                   _field(body, "update_encoding", str),
                   float(_field(body, "deadline_s", (int, float))),
                   None if params is None else MaskingParams.from_dict(params))


@dataclass(frozen=True)
class Update(Message):
    """Client to server: the state trained in ``round``, weighted by ``num_examples``.

    ``tensors`` (the payload) is the trained state (same keys and shapes as the task's),
    ``metrics`` numbers such as ``train_loss``, ``soft_labels_added`` and ``compute_seconds``
    (finite: JSON has no others). What the values must be to be aggregated (``num_examples`` in
    ``[1, MAX_EXAMPLES]``, the task's names and shapes, finite tensors) is checked by the
    receiver's round machine (:func:`lpfl.validation.check_update`), not here.
    """

    TYPE: ClassVar[str] = UPDATE
    tensors: bytes
    num_examples: int
    metrics: Mapping[str, float] = field(default_factory=dict)

    @property
    def payload(self) -> bytes:
        return self.tensors

    def _body(self) -> dict[str, Any]:
        return {"num_examples": self.num_examples,
                "metrics": {k: float(v) for k, v in self.metrics.items()}}

    def _check_body(self) -> None:
        _require(self.round >= 1, E_BAD_MESSAGE, "an update's round must be >= 1")
        _require(_is_int(self.num_examples), E_BAD_MESSAGE,
                 f"num_examples {self.num_examples!r} must be an integer")
        _require(isinstance(self.metrics, Mapping), E_BAD_MESSAGE, "metrics must be a map")
        _check_metrics(self.metrics, "metrics")

    @classmethod
    def _from_body(cls, envelope: Envelope, body: Mapping[str, Any], payload: bytes) -> Update:
        metrics = _field(body, "metrics", dict)
        _check_metrics(metrics, "metrics")
        return cls(envelope.round, envelope.client_id, payload, _field(body, "num_examples", int),
                   {str(k): float(v) for k, v in metrics.items()})


@dataclass(frozen=True)
class Error(Message):
    """Either direction: a refusal or a failure, with an ``E_*`` code and a human reason."""

    TYPE: ClassVar[str] = ERROR
    code: str
    reason: str

    @classmethod
    def of(cls, round_number: int, client_id: str, code: str, reason: str) -> Error:
        """Build an error, cutting ``reason`` to :data:`MAX_REASON_CHARS`."""
        return cls(round_number, client_id, code, reason[:MAX_REASON_CHARS])

    def _body(self) -> dict[str, Any]:
        return {"code": self.code, "reason": self.reason}

    def _check_body(self) -> None:
        _require(self.code in ERROR_CODES, E_BAD_MESSAGE, f"unknown error code {self.code!r}")
        _check_reason(self.reason)

    @classmethod
    def _from_body(cls, envelope: Envelope, body: Mapping[str, Any], payload: bytes) -> Error:
        return cls(envelope.round, envelope.client_id, _field(body, "code", str),
                   _field(body, "reason", str))


@dataclass(frozen=True)
class Ack(Message):
    """Server to client: the message of type ``of`` was accepted; ``detail`` is plain JSON
    context (for a hello: the current round and the number of rounds)."""

    TYPE: ClassVar[str] = ACK
    of: str
    detail: Mapping[str, Any] = field(default_factory=dict)

    def _body(self) -> dict[str, Any]:
        return {"of": self.of, "detail": dict(self.detail)}

    def _check_body(self) -> None:
        _require(self.of in MESSAGE_TYPES, E_BAD_MESSAGE, f"ack of unknown type {self.of!r}")
        _require(isinstance(self.detail, Mapping), E_BAD_MESSAGE, "detail must be a map")
        _check_json(dict(self.detail), "detail")

    @classmethod
    def _from_body(cls, envelope: Envelope, body: Mapping[str, Any], payload: bytes) -> Ack:
        return cls(envelope.round, envelope.client_id, _field(body, "of", str),
                   _field(body, "detail", dict))


@dataclass(frozen=True)
class Bye(Message):
    """Either direction: the sender is done (the run finished, or the client leaves)."""

    TYPE: ClassVar[str] = BYE
    reason: str = ""

    def _body(self) -> dict[str, Any]:
        return {"reason": self.reason}

    def _check_body(self) -> None:
        _check_reason(self.reason)

    @classmethod
    def _from_body(cls, envelope: Envelope, body: Mapping[str, Any], payload: bytes) -> Bye:
        return cls(envelope.round, envelope.client_id, _field(body, "reason", str))


def _check_reason(reason: object) -> None:
    _require(isinstance(reason, str) and len(reason) <= MAX_REASON_CHARS, E_BAD_MESSAGE,
             f"reason must be a string of at most {MAX_REASON_CHARS} characters")


# Secure aggregation (docs/protocol.md §12): keys, encrypted key shares, the masked input and
# the unmasking, each checked like the messages above. Keys, secrets and shares are 32 bytes,
# base64 (RFC 4648, with padding) in the body.

KEY_BYTES = 32
"""An X25519 public key, a secret, or one Shamir share of a secret (two 16-byte halves)."""
SEALED_SHARES_BYTES = 12 + 2 * KEY_BYTES + 16
"""One client's two shares for one peer, sealed: nonce, ciphertext, authentication tag."""


def _encode_bytes(value: bytes) -> str:
    return binascii.b2a_base64(value, newline=False).decode("ascii")


def _decode_bytes(value: object, what: str) -> bytes:
    _require(isinstance(value, str), E_BAD_MESSAGE, f"{what} must be a base64 string")
    assert isinstance(value, str)
    try:
        return binascii.a2b_base64(value.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise WireError(E_BAD_MESSAGE, f"{what} is not base64") from None


def _check_bytes(value: object, size: int, what: str) -> None:
    _require(isinstance(value, bytes) and len(value) == size, E_BAD_MESSAGE,
             f"{what} must be {size} bytes")


def _check_peers(peers: Mapping[str, bytes], size: int, what: str) -> None:
    _require(isinstance(peers, Mapping), E_BAD_MESSAGE, f"{what} must be a map")
    for peer, value in peers.items():
        check_client_id(peer)
        _check_bytes(value, size, f"{what}[{peer!r}]")


def _peers_body(peers: Mapping[str, bytes]) -> dict[str, str]:
    return {peer: _encode_bytes(value) for peer, value in sorted(peers.items())}


def _peers_from_body(body: Mapping[str, Any], name: str) -> dict[str, bytes]:
    return {str(peer): _decode_bytes(value, f"body.{name}[{peer!r}]")
            for peer, value in _field(body, name, dict).items()}


def _check_secagg_round(message: Message) -> None:
    _require(message.round >= 1, E_BAD_MESSAGE, f"a {message.TYPE}'s round must be >= 1")


@dataclass(frozen=True)
class MaskingParams:
    """A secure-aggregation task's rules (the ``secure_aggregation`` object of a ``task``).

    ``threshold``: how many clients must get through every step (and how many shares rebuild a
    secret); ``scale_bits``: each value ``v`` is sent as ``round(v × 2**scale_bits)`` modulo
    2³²; ``clip_range``: each coordinate of the change from the global state is first clamped
    to ``[-clip_range, clip_range]``; ``max_weight``: the update is weighted by
    ``min(num_examples, max_weight)``; ``clip_norm`` (0: none): the change's L2 norm is clipped
    to it first; ``noise_std``: the standard deviation of the Gaussian noise the client adds to
    each weighted coordinate (differential privacy; 0: none).
    """

    threshold: int
    scale_bits: int
    clip_range: float
    max_weight: int
    clip_norm: float = 0.0
    noise_std: float = 0.0

    def check(self) -> None:
        _require(_is_int(self.threshold) and self.threshold >= 2, E_BAD_MESSAGE,
                 f"secure_aggregation.threshold {self.threshold!r} must be an integer >= 2")
        _require(_is_int(self.scale_bits) and 0 <= self.scale_bits <= 30, E_BAD_MESSAGE,
                 f"secure_aggregation.scale_bits {self.scale_bits!r} must be in [0, 30]")
        _require(_is_int(self.max_weight) and self.max_weight >= 1, E_BAD_MESSAGE,
                 f"secure_aggregation.max_weight {self.max_weight!r} must be an integer >= 1")
        _require(_is_number(self.clip_range) and 0 < self.clip_range < math.inf, E_BAD_MESSAGE,
                 f"secure_aggregation.clip_range {self.clip_range!r} must be a positive number")
        for name in ("clip_norm", "noise_std"):
            value = getattr(self, name)
            _require(_is_number(value) and 0 <= value < math.inf, E_BAD_MESSAGE,
                     f"secure_aggregation.{name} {value!r} must be a number >= 0")

    def to_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "scale_bits": self.scale_bits,
                "clip_range": float(self.clip_range), "max_weight": self.max_weight,
                "clip_norm": float(self.clip_norm), "noise_std": float(self.noise_std)}

    @classmethod
    def from_dict(cls, body: object) -> MaskingParams:
        _require(isinstance(body, dict), E_BAD_MESSAGE, "body.secure_aggregation must be an object")
        assert isinstance(body, dict)
        params = cls(_field(body, "threshold", int), _field(body, "scale_bits", int),
                     float(_field(body, "clip_range", (int, float))),
                     _field(body, "max_weight", int),
                     float(_field(body, "clip_norm", (int, float))),
                     float(_field(body, "noise_std", (int, float))))
        params.check()
        return params


@dataclass(frozen=True)
class AdvertiseKeys(Message):
    """Client to server, after training a secure-aggregation task: its two fresh X25519 public
    keys, one to encrypt key shares to it (``cipher_key``), one to agree pairwise masks
    (``mask_key``)."""

    TYPE: ClassVar[str] = ADVERTISE_KEYS
    cipher_key: bytes
    mask_key: bytes

    def _body(self) -> dict[str, Any]:
        return {"cipher_key": _encode_bytes(self.cipher_key),
                "mask_key": _encode_bytes(self.mask_key)}

    def _check_body(self) -> None:
        _check_secagg_round(self)
        _check_bytes(self.cipher_key, KEY_BYTES, "cipher_key")
        _check_bytes(self.mask_key, KEY_BYTES, "mask_key")

    @classmethod
    def _from_body(cls, envelope: Envelope, body: Mapping[str, Any],
                   payload: bytes) -> AdvertiseKeys:
        return cls(envelope.round, envelope.client_id,
                   _decode_bytes(body.get("cipher_key"), "body.cipher_key"),
                   _decode_bytes(body.get("mask_key"), "body.mask_key"))


@dataclass(frozen=True)
class PublicKeys(Message):
    """Server to client: the keys of every client that advertised in time (the client itself
    included), ``{client id: (cipher_key, mask_key)}``. A client's Shamir index is its
    1-based position in the sorted ids."""

    TYPE: ClassVar[str] = PUBLIC_KEYS
    keys: Mapping[str, tuple[bytes, bytes]]

    def _body(self) -> dict[str, Any]:
        return {"keys": {cid: {"cipher_key": _encode_bytes(c), "mask_key": _encode_bytes(m)}
                         for cid, (c, m) in sorted(self.keys.items())}}

    def _check_body(self) -> None:
        _check_secagg_round(self)
        _require(isinstance(self.keys, Mapping) and len(self.keys) >= 2, E_BAD_MESSAGE,
                 "keys must map at least two client ids to their keys")
        for cid, pair in self.keys.items():
            check_client_id(cid)
            _require(isinstance(pair, tuple) and len(pair) == 2, E_BAD_MESSAGE,
                     f"keys[{cid!r}] must be a pair of keys")
            _check_bytes(pair[0], KEY_BYTES, f"keys[{cid!r}].cipher_key")
            _check_bytes(pair[1], KEY_BYTES, f"keys[{cid!r}].mask_key")

    @classmethod
    def _from_body(cls, envelope: Envelope, body: Mapping[str, Any], payload: bytes) -> PublicKeys:
        keys = {}
        for cid, pair in _field(body, "keys", dict).items():
            _require(isinstance(pair, dict), E_BAD_MESSAGE, f"keys[{cid!r}] must be an object")
            keys[str(cid)] = (_decode_bytes(pair.get("cipher_key"), f"keys[{cid!r}].cipher_key"),
                              _decode_bytes(pair.get("mask_key"), f"keys[{cid!r}].mask_key"))
        return cls(envelope.round, envelope.client_id, keys)


@dataclass(frozen=True)
class ShareKeys(Message):
    """Sealed key shares, ``{peer id: sealed}``. Client to server: one for every other client of
    the ``public_keys`` list, ``peer`` the recipient. Server to client: the ones addressed to
    it, ``peer`` the sender; these senders and the client are the round's masking set."""

    TYPE: ClassVar[str] = SHARE_KEYS
    shares: Mapping[str, bytes]

    def _body(self) -> dict[str, Any]:
        return {"shares": _peers_body(self.shares)}

    def _check_body(self) -> None:
        _check_secagg_round(self)
        _check_peers(self.shares, SEALED_SHARES_BYTES, "shares")
        _require(self.client_id not in self.shares, E_BAD_MESSAGE,
                 "shares must not name the client itself")

    @classmethod
    def _from_body(cls, envelope: Envelope, body: Mapping[str, Any], payload: bytes) -> ShareKeys:
        return cls(envelope.round, envelope.client_id, _peers_from_body(body, "shares"))


@dataclass(frozen=True)
class MaskedInput(Message):
    """Client to server: the masked vector (the payload, :func:`lpfl.secagg.encode_vector`) and
    the client's metrics, which travel in clear (finite numbers)."""

    TYPE: ClassVar[str] = MASKED_INPUT
    vector: bytes
    metrics: Mapping[str, float] = field(default_factory=dict)

    @property
    def payload(self) -> bytes:
        return self.vector

    def _body(self) -> dict[str, Any]:
        return {"metrics": {k: float(v) for k, v in self.metrics.items()}}

    def _check_body(self) -> None:
        _check_secagg_round(self)
        _require(isinstance(self.metrics, Mapping), E_BAD_MESSAGE, "metrics must be a map")
        _check_metrics(self.metrics, "metrics")

    @classmethod
    def _from_body(cls, envelope: Envelope, body: Mapping[str, Any],
                   payload: bytes) -> MaskedInput:
        metrics = _field(body, "metrics", dict)
        _check_metrics(metrics, "metrics")
        return cls(envelope.round, envelope.client_id, payload,
                   {str(k): float(v) for k, v in metrics.items()})


def _check_ids(ids: object, what: str) -> None:
    _require(isinstance(ids, tuple), E_BAD_MESSAGE, f"{what} must be a list of client ids")
    assert isinstance(ids, tuple)
    for cid in ids:
        check_client_id(cid)
    _require(len(set(ids)) == len(ids), E_BAD_MESSAGE, f"{what} names a client twice")


@dataclass(frozen=True)
class Unmask(Message):
    """Server to client: whose masked input is in the sum (``survivors``) and who shared keys
    but sent none (``dropped``): reveal the self-mask shares of the first and the mask-key
    shares of the second, never both for one client."""

    TYPE: ClassVar[str] = UNMASK
    survivors: tuple[str, ...]
    dropped: tuple[str, ...] = ()

    def _body(self) -> dict[str, Any]:
        return {"survivors": list(self.survivors), "dropped": list(self.dropped)}

    def _check_body(self) -> None:
        _check_secagg_round(self)
        _check_ids(self.survivors, "survivors")
        _check_ids(self.dropped, "dropped")
        _require(not set(self.survivors) & set(self.dropped), E_BAD_MESSAGE,
                 "a client cannot be both a survivor and dropped")

    @classmethod
    def _from_body(cls, envelope: Envelope, body: Mapping[str, Any], payload: bytes) -> Unmask:
        survivors, dropped = _field(body, "survivors", list), _field(body, "dropped", list)
        return cls(envelope.round, envelope.client_id, tuple(survivors), tuple(dropped))


@dataclass(frozen=True)
class UnmaskShares(Message):
    """Client to server, answering ``unmask``: its share of each survivor's self-mask seed
    (``self_mask_shares``) and of each dropped client's mask key (``mask_key_shares``)."""

    TYPE: ClassVar[str] = UNMASK_SHARES
    self_mask_shares: Mapping[str, bytes]
    mask_key_shares: Mapping[str, bytes] = field(default_factory=dict)

    def _body(self) -> dict[str, Any]:
        return {"self_mask_shares": _peers_body(self.self_mask_shares),
                "mask_key_shares": _peers_body(self.mask_key_shares)}

    def _check_body(self) -> None:
        _check_secagg_round(self)
        _check_peers(self.self_mask_shares, KEY_BYTES, "self_mask_shares")
        _check_peers(self.mask_key_shares, KEY_BYTES, "mask_key_shares")
        _require(not set(self.self_mask_shares) & set(self.mask_key_shares), E_BAD_MESSAGE,
                 "a client's self-mask and mask-key shares are never both revealed")

    @classmethod
    def _from_body(cls, envelope: Envelope, body: Mapping[str, Any],
                   payload: bytes) -> UnmaskShares:
        return cls(envelope.round, envelope.client_id,
                   _peers_from_body(body, "self_mask_shares"),
                   _peers_from_body(body, "mask_key_shares"))


_CLASSES: dict[str, type[Message]] = {c.TYPE: c for c in (
    Hello, Task, Update, Error, Ack, Bye,
    AdvertiseKeys, PublicKeys, ShareKeys, MaskedInput, Unmask, UnmaskShares)}
_WITH_PAYLOAD = frozenset({TASK, UPDATE, MASKED_INPUT})


def _reject_constant(name: str) -> float:
    raise WireError(E_BAD_FRAME, f"header holds the non-JSON number {name}")


@dataclass(frozen=True)
class _Header:
    """A parsed, checked header whose payload may still be on its way."""

    cls: type[Message]
    envelope: Envelope
    body: Mapping[str, Any]
    payload_bytes: int
    start: int
    """Where the payload starts in the first frame."""

    def message(self, payload: bytes) -> Message:
        message = self.cls._from_body(self.envelope, self.body, payload)
        message.check()
        return message


def _parse_header(frame: bytes, limits: PayloadLimits) -> _Header:
    _require(len(frame) >= _HEADER_LENGTH.size, E_BAD_FRAME,
             f"a frame of {len(frame)} bytes is shorter than the 4-byte header length")
    (length,) = _HEADER_LENGTH.unpack_from(frame)
    _require(1 <= length <= MAX_HEADER_BYTES, E_BAD_FRAME,
             f"header length {length} is outside [1, {MAX_HEADER_BYTES}]")
    start = _HEADER_LENGTH.size + length
    _require(len(frame) >= start, E_BAD_FRAME,
             f"header length {length} runs past the end of a {len(frame)}-byte frame")
    try:
        document = json.loads(frame[_HEADER_LENGTH.size : start].decode("utf-8"),
                              parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise WireError(E_BAD_FRAME, f"header is not UTF-8 JSON: {exc}") from None
    _require(isinstance(document, dict), E_BAD_FRAME, "header is not a JSON object")
    envelope = Envelope(document.get("type"), document.get("round"), document.get("client_id"),
                        document.get("schema_version"))
    envelope.check()
    size = document.get("payload_bytes")
    _require(_is_int(size) and size >= 0, E_BAD_MESSAGE, "payload_bytes must be an integer >= 0")
    limit = limits.get(envelope.type, 0)
    _require(size <= limit, E_TOO_LARGE,
             f"{envelope.type} payload of {size} bytes exceeds this side's limit of {limit}")
    body = document.get("body")
    _require(isinstance(body, dict), E_BAD_MESSAGE, "body must be a JSON object")
    header = _Header(_CLASSES[envelope.type], envelope, body, size, start)
    # Check the body now, before any payload is stored; the payload is checked once complete.
    early = header.cls._from_body(envelope, body, b"")
    early._check_body()
    _require(size > 0 or envelope.type not in _WITH_PAYLOAD, E_BAD_MESSAGE,
             f"a {envelope.type} must carry a payload")
    return header


PayloadLimits = Mapping[str, int]
"""Most payload bytes a receiver accepts per message type; a type not listed accepts none."""

UNLIMITED: PayloadLimits = {TASK: 2**63, UPDATE: 2**63, MASKED_INPUT: 2**63}
"""Limits for :func:`parse` on bytes already in memory."""


class FrameReader:
    """Turns the frames of one connection back into checked messages, one at a time (sans I/O).

    Feed each binary websocket message to :meth:`feed`; it returns a message once its last frame
    has arrived and ``None`` while a payload is still coming (:attr:`pending` then says what is
    coming). The declared payload size is checked against ``limits`` when the first frame arrives,
    before any payload byte is kept. After :meth:`discard`, the rest of the pending payload is
    counted but not stored and the message is dropped when complete: how a receiver refuses an
    update early without losing its place in the stream. A :class:`WireError` resets the reader,
    so the next frame is read as the start of a new message. With ``client_id`` set, a message
    that names another client is refused (:data:`E_UNAUTHORIZED`): a connection speaks for the
    one client it authenticated as.
    """

    def __init__(self, limits: PayloadLimits, client_id: str | None = None) -> None:
        self._limits = limits
        self._client_id = client_id
        self._header: _Header | None = None
        self._received = 0
        self._buffer = bytearray()
        self._keep = True

    @property
    def pending(self) -> Envelope | None:
        """The envelope of a message whose payload is still arriving, else ``None``."""
        return None if self._header is None else self._header.envelope

    def discard(self) -> None:
        """Drop the pending message: count its remaining payload but keep none of it."""
        self._keep = False
        self._buffer = bytearray()

    def _reset(self) -> None:
        self._header, self._received, self._buffer, self._keep = None, 0, bytearray(), True

    def feed(self, frame: bytes) -> Message | None:
        """Take one frame; return the completed message or ``None``; raise :class:`WireError`."""
        try:
            return self._feed(frame)
        except WireError:
            self._reset()
            raise

    def _feed(self, frame: bytes) -> Message | None:
        if self._header is None:
            header = _parse_header(frame, self._limits)
            _require(self._client_id in (None, header.envelope.client_id), E_UNAUTHORIZED,
                     f"this connection speaks for client {self._client_id}, not "
                     f"{header.envelope.client_id}")
            self._header = header
            chunk = memoryview(frame)[self._header.start :]
        else:
            _require(len(frame) > 0, E_BAD_FRAME, "an empty continuation frame")
            chunk = memoryview(frame)
        header = self._header
        _require(self._received + len(chunk) <= header.payload_bytes, E_BAD_FRAME,
                 f"frames carry more than the declared {header.payload_bytes} payload bytes")
        self._received += len(chunk)
        if self._keep:
            self._buffer += chunk
        if self._received < header.payload_bytes:
            return None
        keep, payload = self._keep, bytes(self._buffer)
        self._reset()
        return header.message(payload) if keep else None


def parse(data: bytes, limits: PayloadLimits = UNLIMITED) -> Message:
    """Parse one whole message (all frames joined, as :meth:`Message.serialize` makes it)."""
    message = FrameReader(limits).feed(data)
    _require(message is not None, E_BAD_FRAME, "the message is truncated: payload bytes missing")
    assert message is not None
    return message
