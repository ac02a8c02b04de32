"""The scorer's side of the ZeroMQ handshake: CURVE keys or the token (PLAIN), checked by a
ZAP handler before any message of the peer is read. See common.handshake."""

from __future__ import annotations

import logging
from pathlib import Path

import zmq
from zmq.auth.thread import ThreadAuthenticator

from common.curve import load_server_keys
from scorer_svc.auth import same_token

log = logging.getLogger(__name__)


class TokenAuthenticator(ThreadAuthenticator):
    """PLAIN with the token as the password, compared in constant time and never logged."""

    def __init__(self, context: zmq.Context, token: str):
        super().__init__(context, log=logging.getLogger("scorer_svc.zap"))
        self._token = token

    def _authenticate_plain(self, domain: str, username: str, password: str) -> tuple[bool, bytes]:
        if same_token(password, self._token):
            return True, b"OK"
        log.warning("refused a ZeroMQ peer in the handshake: wrong token")
        return False, b"wrong token"


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
        auth = ThreadAuthenticator(context, log=logging.getLogger("scorer_svc.zap"))
        auth.start()
        auth.configure_curve(domain="*", location=str(curve_authorized_keys_dir))
        socket.curve_secretkey = secret
        socket.curve_publickey = public
        socket.curve_server = True
        n_keys = len(list(curve_authorized_keys_dir.glob("*.key")))
        log.info("CURVE on: %d authorized client key(s) in %s", n_keys, curve_authorized_keys_dir)
        return auth
    if token is not None:
        auth = TokenAuthenticator(context, token)
        auth.start()
        socket.plain_server = True
        log.info("ZeroMQ peers authenticate with the token in the handshake (PLAIN)")
        return auth
    return None
