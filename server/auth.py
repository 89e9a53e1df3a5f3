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
import logging
import secrets
from collections.abc import Mapping

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from lpfl import wire
from lpfl.errors import ConfigError

logger = logging.getLogger(__name__)

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
