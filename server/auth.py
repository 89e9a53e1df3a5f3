"""Client authentication: one secret token per client id, checked during the websocket handshake.

A client sends ``X-LPFL-Client-Id: <id>`` and ``Authorization: Bearer <token>`` with its upgrade
request. :class:`TokenAuthenticator` answers anything else with HTTP 401 before the connection
becomes a websocket, so an unauthenticated peer never gets a single frame read. Tokens are
compared with :func:`hmac.compare_digest`, also for unknown ids, so timing does not reveal which
ids exist.
"""

from __future__ import annotations

import hmac
import http
import json
import logging
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from lpfl import wire
from lpfl.errors import ConfigError

logger = logging.getLogger(__name__)

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


class TokenAuthenticator:
    """``process_request`` hook for :func:`websockets.asyncio.server.serve`."""

    def __init__(self, tokens: Mapping[str, str]) -> None:
        if not tokens:
            raise ConfigError("no client tokens: set server.tokens-file to a JSON object of "
                              "client id -> token")
        self._tokens = dict(tokens)
        self._decoy = secrets.token_urlsafe(24)

    def verify(self, client_id: str, token: str) -> bool:
        """Whether ``token`` is ``client_id``'s, in time independent of where they differ."""
        expected = self._tokens.get(client_id)
        same = hmac.compare_digest(token.encode(), (expected or self._decoy).encode())
        return same and expected is not None

    def __call__(self, connection: ServerConnection, request: Request) -> Response | None:
        ids = request.headers.get_all(wire.CLIENT_ID_HEADER)
        auth = request.headers.get_all("Authorization")
        scheme, _, token = auth[0].partition(" ") if len(auth) == 1 else ("", "", "")
        if len(ids) == 1 and scheme == "Bearer" and self.verify(ids[0], token):
            return None
        logger.warning("refused a connection from %s: unknown client id or wrong token",
                       connection.remote_address)
        return connection.respond(http.HTTPStatus.UNAUTHORIZED,
                                  "unknown client id or wrong token\n")
