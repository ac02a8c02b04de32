"""How a trainer proves itself in the ZeroMQ handshake, before the scorer reads a message.

With CURVE configured the link is encrypted and the scorer admits only the public keys it
holds. Otherwise, with a token configured, the handshake is ZeroMQ's PLAIN: the token is the
password (the user name is not checked). A peer that fails either is dropped by the scorer's
ZAP handler before any message of it is read; the trainer learns it from a handshake event,
not from a missing reply.
"""

from __future__ import annotations

import zmq

from common.wire.curve import ClientKeys, apply_client_keys

PLAIN_USERNAME = b"trainer"


def secure_client(socket: zmq.Socket, *, token: str | None, curve: ClientKeys | None) -> None:
    """Set the socket's handshake to what the scorer expects (before connect)."""
    if curve is not None:
        apply_client_keys(socket, curve)
    elif token is not None:
        socket.plain_username = PLAIN_USERNAME
        socket.plain_password = token.encode()


# Handshake events worth a message of their own, rather than a wait that runs out.
REFUSED_EVENTS = zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL


def refusal_advice(event: int, *, token: str | None, curve: ClientKeys | None) -> str:
    """What a handshake refusal means for this trainer's settings."""
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        if curve is not None:
            return (
                "the scorer refused this trainer's CURVE key: put its public key among the "
                "scorer's authorized keys (curve_authorized_keys_dir), and check "
                "scorer_curve_server_key_file is the scorer's public key"
            )
        return (
            "the scorer refused this trainer's token: set scorer_token (or SCORER_TOKEN, or "
            "SCORER_TOKEN_FILE) to the scorer's token"
        )
    ours = "CURVE" if curve is not None else "a token" if token is not None else "no security"
    return (
        f"the scorer's handshake does not match this trainer's ({ours}): the scorer may "
        "require a token (set scorer_token) or CURVE (scorer_curve_* keys), or require "
        "neither"
    )
