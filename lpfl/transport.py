"""The websocket transport's pieces beside the wire schema (:mod:`lpfl.wire`, which does no I/O):
the server's settings and a byte meter for connections.

Server settings say where the aggregator listens, how it authenticates, and the round rules.
They live in the ``[server]`` table of the same run file as :class:`lpfl.config.RunConfig`, with
the round rules in ``[server.round]``::

    [server]
    host = "127.0.0.1"
    port = 8765
    tokens-file = "tokens.json"     # {"client-id": "token", ...}
    certfile = "cert.pem"           # with keyfile: serve wss:// instead of ws://
    keyfile = "key.pem"

    [server.round]
    min-clients = 3
    min-updates = 2
    deadline-s = 60
    clip = "adaptive"               # or "absolute" with clip-norm = ..., or "off"
    aggregation = "fedavg"          # or "median", "trimmed-mean", "norm-filter"
    max-accuracy-drop = 0.05        # refuse a new state 5 points less accurate than the last
    update-encoding = "fp16"

    [server.round.privacy]          # off by default; lpfl.privacy, docs/privacy.md
    secure-aggregation = false      # true: the server learns only the sum of a round's updates
    noise-multiplier = 0.0          # > 0: differential privacy (needs clip = "absolute")

:func:`load_server_config` reads both parts; ``--set server.port=9000`` style overrides work like
the run config's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import math
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lpfl.config import RunConfig, build_section, config_from_dict, parse_override, read_toml
from lpfl.errors import ConfigError
from lpfl.protocol import RoundRules


class EvaluationMode(enum.StrEnum):
    """When the server evaluates a round's new global state."""

    INLINE = "inline"
    """Before the next round starts (the round's time includes it; the accuracy guard needs it)."""
    BACKGROUND = "background"
    """In another process while the next rounds train (``lpfl.server.background_eval``)."""


@dataclass(frozen=True)
class ServerSettings:
    """The aggregator process: network, security, storage and the :class:`RoundRules`.

    ``run_dir`` receives ``checkpoint.safetensors`` and ``results.json``. ``tokens_file`` is a JSON
    object mapping each client id to its secret token; a client that is not listed, or sends
    another token, is refused during the websocket handshake. ``max_concurrent_uploads`` bounds
    how many update payloads are being received at once (each takes up to one model's worth of
    memory); other uploaders wait, their data held back by TCP flow control. An uploader holds its
    slot only while its frames keep coming: one that sends no frame for
    ``upload_frame_timeout_s`` (a frame is at most 64 KiB, so this is also a minimum rate) gets
    ``timeout``, loses its turn and its connection. The server pings every connection each
    ``ping_interval_s`` and closes one that has not answered within ``ping_timeout_s``: clients
    must keep answering pings while they train. ``evaluation`` (:class:`EvaluationMode`) says
    whether each round's new global state is evaluated before the next round starts or in the
    background, off the federation's critical path.
    """

    host: str = "127.0.0.1"
    port: int = 8765
    run_dir: str = "runs/server"
    tokens_file: str = ""
    certfile: str = ""
    keyfile: str = ""
    hello_timeout_s: float = 10.0
    max_concurrent_uploads: int = 8
    upload_frame_timeout_s: float = 30.0
    ping_interval_s: float = 20.0
    ping_timeout_s: float = 20.0
    evaluation: EvaluationMode = EvaluationMode.INLINE
    round: RoundRules = field(default_factory=RoundRules)

    def __post_init__(self) -> None:
        checks = (
            (0 <= self.port <= 65535, f"port={self.port} must be in [0, 65535] (0: any free port)"),
            (bool(self.run_dir), "run_dir is empty: name a folder for checkpoints and results"),
            (bool(self.certfile) == bool(self.keyfile),
             "certfile and keyfile go together: set both for wss://, or neither for ws://"),
            (0 < self.hello_timeout_s < math.inf, "hello_timeout_s must be > 0"),
            (self.max_concurrent_uploads >= 1, "max_concurrent_uploads must be >= 1"),
            (0 < self.upload_frame_timeout_s < math.inf, "upload_frame_timeout_s must be > 0"),
            (0 < self.ping_interval_s < math.inf, "ping_interval_s must be > 0"),
            (0 < self.ping_timeout_s < math.inf, "ping_timeout_s must be > 0"),
            (self.evaluation is EvaluationMode.INLINE or not self.round.guards_accuracy,
             "evaluation=\"background\" cannot run with round.max-accuracy-drop: the guard "
             "judges each state's accuracy before committing it; use evaluation = \"inline\""),
        )
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"server.{message}")

    @property
    def tls(self) -> bool:
        return bool(self.certfile)

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-friendly dict of every setting (enums as their values)."""
        return dataclasses.asdict(self, dict_factory=lambda items: {
            key: value.value if isinstance(value, enum.Enum) else value for key, value in items})


def server_settings_from_dict(table: Mapping[str, Any]) -> ServerSettings:
    """Build and validate :class:`ServerSettings` from the ``[server]`` table."""
    return build_section(ServerSettings, table, "server")


def load_server_config(
    path: str | Path, overrides: Sequence[str] = ()
) -> tuple[RunConfig, ServerSettings]:
    """Read a run file's :class:`RunConfig` and its ``[server]`` table, applying ``--set``
    overrides (``server.*`` keys go to the server settings, the rest to the run config)."""
    table = read_toml(path)
    server_table = dict(table.pop("server", {}))
    table.pop("field", None)  # read by `lpfl field` (lpfl.fleet)
    run_overrides = []
    for text in overrides:
        key, value = parse_override(text)
        parts = key.replace("-", "_").split(".")
        if parts[0] != "server":
            run_overrides.append(text)
            continue
        node = server_table
        for part in parts[1:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    try:
        return config_from_dict(table, run_overrides), server_settings_from_dict(server_table)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


# --- byte metering: what a connection really reads and writes ------------------------------


class ByteMeter:
    """Counts every byte a connection reads from and writes to its transport.

    That is the websocket handshake, websocket frame headers and masks, pings, close frames, the
    headers above and the payloads: what :mod:`lpfl.server` reports as ``wire_*_bytes`` beside
    the payload sizes. Under TLS it counts the plaintext, so TLS record overhead is not included.
    """

    def __init__(self) -> None:
        self.bytes_in = 0
        self.bytes_out = 0


class MeteredProtocol(asyncio.Protocol):
    """Mixin for websockets' connection classes (they are asyncio protocols) that gives each
    connection a :class:`ByteMeter`: list it first, e.g.
    ``class Metered(MeteredProtocol, ServerConnection)``."""

    meter: ByteMeter

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.meter = ByteMeter()
        super().connection_made(typing.cast(asyncio.Transport,
                                             _MeteredTransport(transport, self.meter)))

    def data_received(self, data: bytes) -> None:
        self.meter.bytes_in += len(data)
        super().data_received(data)


class _MeteredTransport:
    """Forwards everything to the real transport, counting the bytes of each write."""

    def __init__(self, inner: asyncio.BaseTransport, meter: ByteMeter) -> None:
        self._inner = typing.cast(asyncio.Transport, inner)
        self._meter = meter

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._meter.bytes_out += len(data)
        self._inner.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)
