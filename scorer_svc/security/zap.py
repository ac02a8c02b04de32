"""The scorer's side of the ZeroMQ handshake: CURVE keys or the token (PLAIN), checked by a
ZAP handler before any message of the peer is read. See common.wire.handshake."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from common.wire.curve import load_server_keys
from scorer_svc.security.tokens import same_token

log = logging.getLogger(__name__)


LOG_EVERY_SECONDS = 60.0


class Refusals:
    """Peers refused in the handshake, logged as a warning at once for the first, then at
    most once every LOG_EVERY_SECONDS with how many were refused since: a peer that keeps
    knocking cannot flood the log."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last: float | None = None
        self._since = 0
        self._lock = threading.Lock()

    def note(self, why: str) -> None:
        with self._lock:
            now = self._clock()
            self._since += 1
            if self._last is not None and now - self._last < LOG_EVERY_SECONDS:
                return
            count, self._since, self._last = self._since, 0, now
        if count == 1:
            log.warning("refused a ZeroMQ peer in the handshake: %s", why)
        else:
            log.warning(
                "refused %d ZeroMQ peers in the handshake in the last %.0f s, the last: %s",
                count, LOG_EVERY_SECONDS, why,
            )  # fmt: skip


class TokenAuthenticator(ThreadAuthenticator):
    """PLAIN with the token as the password, compared in constant time and never logged."""

    def __init__(self, context: zmq.Context, token: str):
        super().__init__(context, log=logging.getLogger("scorer_svc.security.zap"))
        self._token = token
        self.refusals = Refusals()

    def _authenticate_plain(self, domain: str, username: str, password: str) -> tuple[bool, bytes]:
        if same_token(password, self._token):
            return True, b"OK"
        self.refusals.note("wrong token")
        return False, b"wrong token"


class CurveAuthenticator(ThreadAuthenticator):
    """CURVE against the authorized keys' folder; a refused key is logged (its first
    characters: a public key, not a secret)."""

    def __init__(self, context: zmq.Context):
        super().__init__(context, log=logging.getLogger("scorer_svc.security.zap"))
        self.refusals = Refusals()

    async def _authenticate_curve(self, domain: str, client_key: bytes) -> tuple[bool, bytes]:
        allowed, reason = await super()._authenticate_curve(domain, client_key)
        if not allowed:
            key = z85.encode(client_key).decode()
            self.refusals.note(f"CURVE key {key[:8]}... is not among the authorized keys")
        return allowed, reason


def secure_server(
    context: zmq.Context,
    socket: zmq.Socket,
    *,
    token: str | None,
    curve_secret_key_file: Path | None,
    curve_authorized_keys_dir: Path | None,
) -> ThreadAuthenticator | None:
    """Make socket (not yet bound) authenticate peers in the handshake; returns the running
    authenticator to stop with the socket, or None when the scorer is open."""
    if curve_secret_key_file is not None and curve_authorized_keys_dir is not None:
        public, secret = load_server_keys(curve_secret_key_file)
        curve = CurveAuthenticator(context)
        curve.start()
        curve.configure_curve(domain="*", location=str(curve_authorized_keys_dir))
        socket.curve_secretkey = secret
        socket.curve_publickey = public
        socket.curve_server = True
        n_keys = len(list(curve_authorized_keys_dir.glob("*.key")))
        log.info("CURVE on: %d authorized client key(s) in %s", n_keys, curve_authorized_keys_dir)
        return curve
    if token is not None:
        auth = TokenAuthenticator(context, token)
        auth.start()
        socket.plain_server = True
        log.info("ZeroMQ peers authenticate with the token in the handshake (PLAIN)")
        return auth
    return None
