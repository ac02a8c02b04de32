"""ZeroMQ CURVE keys for links across hosts: encryption, and the scorer knows its clients.

Keys are pyzmq certificate files: `NAME.key` holds a public key, `NAME.key_secret` a public and
a secret key. `python -m scorer_svc keys DIR NAME` writes a pair.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth


class CurveKeyError(ValueError):
    """A key file is missing or unreadable (the message names it)."""


@dataclass(frozen=True)
class ClientKeys:
    public: bytes
    secret: bytes
    server_public: bytes


def _load(path: str | Path, *, secret: bool) -> tuple[bytes, bytes | None]:
    path = Path(path)
    if not path.is_file():
        raise CurveKeyError(f"CURVE key file {path} does not exist")
    try:
        public, secret_key = zmq.auth.load_certificate(path)
    except (ValueError, OSError) as exc:
        raise CurveKeyError(f"CURVE key file {path} cannot be read: {exc}") from exc
    if secret and not secret_key:
        raise CurveKeyError(f"{path} holds no secret key: give the .key_secret file")
    return public, secret_key


def load_client_keys(secret_file: str | Path, server_public_file: str | Path) -> ClientKeys:
    public, secret = _load(secret_file, secret=True)
    server_public, _ = _load(server_public_file, secret=False)
    assert secret is not None
    return ClientKeys(public, secret, server_public)


def load_server_keys(secret_file: str | Path) -> tuple[bytes, bytes]:
    public, secret = _load(secret_file, secret=True)
    assert secret is not None
    return public, secret


def apply_client_keys(socket: zmq.Socket, keys: ClientKeys) -> None:
    socket.curve_publickey = keys.public
    socket.curve_secretkey = keys.secret
    socket.curve_serverkey = keys.server_public


def create_keys(directory: str | Path, name: str) -> tuple[Path, Path]:
    """Write NAME.key and NAME.key_secret into directory; return their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(str(directory), name)
    os.chmod(secret, 0o600)  # the secret key is for its owner's eyes only
    return Path(public), Path(secret)
