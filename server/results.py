"""What the aggregator records per round, and where it goes.

One :class:`RoundRecord` per completed round: the evaluation of the new global state, the
clients' training metrics, and per client what it did and how many bytes it moved, both as tensor
payload and as measured on its connection (``wire_*``: every byte read from or written to the
transport, handshake and framing included, see :class:`~lpfl.transport.ByteMeter`). Bytes are
counted in windows: a round's window runs from the previous round's close to its own close, so
every byte of a connection lands in exactly one round, including those of failed attempts and of
clients that were connected but not sampled (status ``"idle"``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from lpfl.results import write_atomically


@dataclass(frozen=True)
class ClientRecord:
    """One client's part in a round; ``status`` is a :class:`lpfl.protocol.ClientOutcome` status
    or ``"idle"`` (connected, not sampled). ``capabilities`` is empty for a client that left
    before the round closed."""

    client_id: str
    status: str
    num_examples: int = 0
    metrics: Mapping[str, float] = field(default_factory=dict)
    update_norm: float = 0.0
    clipped: bool = False
    code: str = ""
    """The error code of a refused message or of the client's own failure report."""
    payload_uplink_bytes: int = 0
    payload_downlink_bytes: int = 0
    wire_uplink_bytes: int = 0
    wire_downlink_bytes: int = 0
    capabilities: Mapping[str, Any] = field(default_factory=dict)
    """What the client said in its hello (``cpu_arch``, ``backend``, ``runtime`` versions)."""
    reason: str = ""
    """Why the update was refused, failed or discarded (empty for an accepted one)."""


_TOTALS = ("payload_uplink_bytes", "payload_downlink_bytes", "wire_uplink_bytes",
           "wire_downlink_bytes")


@dataclass(frozen=True)
class RoundRecord:
    """A completed round: evaluation, training metrics, and each client's record."""

    round: int
    attempts: int
    seconds: float
    eval_metrics: Mapping[str, float]
    train_metrics: Mapping[str, float]
    clients: Sequence[ClientRecord]
    eval_seconds: float = 0.0
    """Of :attr:`seconds`, the server's evaluation of the new global state: an instrument of
    the experiment, not a step of training, so reports can leave it out of time to accuracy."""
    refused: str = ""
    """Why a guard (norm or accuracy) refused the round's aggregate and kept the previous global
    state (its clients' updates are then ``discarded``, and :attr:`eval_metrics` are the kept
    state's); empty when the new state was committed."""

    def total(self, name: str) -> int:
        """Sum of one of the byte counters over all clients."""
        return sum(int(getattr(c, name)) for c in self.clients)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON: the fields, plus the byte totals of the round."""
        document = asdict(self)
        document.update({name: self.total(name) for name in _TOTALS})
        return document

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> RoundRecord:
        """Inverse of :meth:`to_dict` (the totals are recomputed, not read)."""
        fields = {k: v for k, v in document.items() if k not in _TOTALS}
        fields["clients"] = [ClientRecord(**c) for c in fields["clients"]]
        return cls(**fields)


class ResultsWriter(Protocol):
    """Receives the whole history after every round; must be idempotent (it is called again
    with the same rounds after a resume)."""

    def write(self, rounds: Sequence[RoundRecord]) -> None: ...


class JsonResultsWriter:
    """Writes ``{"meta": ..., "rounds": [...]}`` to one JSON file, atomically, after each round.

    ``meta`` is whatever the caller wants beside the rounds (the run config, say).
    """

    def __init__(self, path: str | Path, meta: Mapping[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.meta = dict(meta or {})

    def write(self, rounds: Sequence[RoundRecord]) -> None:
        document = {"meta": self.meta, "rounds": [r.to_dict() for r in rounds]}
        write_atomically(self.path, json.dumps(document, indent=1).encode("utf-8"))
