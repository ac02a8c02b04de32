"""The optional shared token: checked on every ZeroMQ request and every REST call. Without
one, the REST routes that change a run (its end, its deletion) take that run's own token: the
secret its trainer sent in the hello (run_token), which only that training run knows."""

from __future__ import annotations

import hmac
import json
from collections.abc import Mapping
from typing import Any

from common.wire.errors import Unauthorized
from scorer_svc.config import Settings

# Liveness, the API's own description and the dashboard page stay open: they reveal no run
# data (the page reads the API with the token its user types in), and health checks
# (compose, orchestrators) cannot carry a secret.
OPEN_PATHS = frozenset(
    {"/healthz", "/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect", "/", "/ui", "/ui/"}
)
# the documentation pages' and the dashboard's scripts and styles
OPEN_PREFIXES = ("/docs-assets/", "/ui/assets/")


def same_token(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def has_shared_token(settings: Settings) -> bool:
    """Whether the scorer was given a token, and so checks every REST call's bearer token
    (the app refuses to start when the token_file is empty)."""
    return settings.token is not None or settings.token_file is not None


def is_runs_token(run_config: Mapping[str, Any], given: str | None) -> bool:
    """Whether `given` is the run token stored at the run's registration; a run registered
    without one has none to match."""
    stored = run_config.get("run_token")
    return isinstance(stored, str) and bool(stored) and same_token(given, stored)


def check_request_token(frame0: Any, expected: str | None) -> None:
    """Refuse a ZeroMQ request whose header lacks the token, before anything else is read."""
    if expected is None:
        return
    try:
        header = json.loads(bytes(frame0)[: 1 << 20])
        given = header.get("token") if isinstance(header, dict) else None
    except (ValueError, RecursionError):  # not JSON: refused below, as without a token
        given = None
    if not same_token(given if isinstance(given, str) else None, expected):
        raise Unauthorized(
            "this scorer requires a token: set scorer_token (or SCORER_TOKEN) in the trainer "
            "to the scorer's token"
        )


def bearer(authorization: str | None) -> str | None:
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return None
