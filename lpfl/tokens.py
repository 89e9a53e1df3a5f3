"""Client tokens: one secret per client id, kept in a JSON tokens file the server reads.

A launcher makes them (:func:`make_tokens`), the server loads them (:func:`load_tokens`) and
checks each client's during the websocket handshake (``lpfl.server.auth``).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable
from pathlib import Path

from lpfl import wire
from lpfl.errors import ConfigError

MIN_TOKEN_CHARS = 16


def make_tokens(client_ids: Iterable[str]) -> dict[str, str]:
    """A fresh random token (192 bits, hex: safe on any command line) for each client id."""
    return {cid: secrets.token_hex(24) for cid in client_ids}


def load_tokens(path: str | Path) -> dict[str, str]:
    """Read a tokens file: a JSON object mapping client ids to tokens of at least 16 characters."""
    p = Path(path)
    try:
        table = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"tokens file {p}: cannot read a JSON object: {exc}") from None
    if not isinstance(table, dict) or not table:
        raise ConfigError(f"tokens file {p}: expected a non-empty JSON object of id -> token")
    for client_id, token in table.items():
        try:
            wire.check_client_id(client_id)
        except wire.WireError as exc:
            raise ConfigError(f"tokens file {p}: {exc.reason}") from None
        if not isinstance(token, str) or len(token) < MIN_TOKEN_CHARS or not token.isascii():
            raise ConfigError(f"tokens file {p}: the token of {client_id!r} must be an ASCII "
                              f"string of at least {MIN_TOKEN_CHARS} characters")
    return dict(table)
