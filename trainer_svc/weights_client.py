"""Reads sampling weights from the scorer's REST API (GET /v1/runs/{id}/weights).

`wait_for(step)` polls until the checkpoint of that step is scored (202 means "not yet": wait
as Retry-After says); `latest()` takes the newest weights already available, or None. Network
errors and unknown steps are retried with a growing pause, each wait logged, up to the
configured wait; then `ScorerUnavailable` says what to check.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import torch

from common.errors import ProtocolError, ScorerUnavailable, Unauthorized

logger = logging.getLogger(__name__)


FIRST_PENDING_POLL = 0.05


class ScoringFailed(ProtocolError):
    """The scorer could not score the checkpoint (409): its error is in the message."""

    code = "scoring_failed"


@dataclass(frozen=True)
class ScorerWeights:
    step: int
    update_index: int
    weights: torch.Tensor  # float64, one per sample, as the JSON body gives them
    window: dict[str, Any] | None  # {t, T, u, start, end, truncated_at}; None for update 1

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> ScorerWeights:
        window = None
        if body.get("window") is not None:
            window = {"t": body.get("t"), "T": body.get("T"), "u": body.get("u"), **body["window"]}
        weights = torch.tensor(body["weights"], dtype=torch.float64)
        return cls(int(body["step"]), int(body["update_index"]), weights, window)


class WeightsClient:
    def __init__(
        self,
        base_url: str,
        run_id: str,
        *,
        wait_seconds: float,
        token: str | None = None,
        client: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.base_url = base_url.rstrip("/")
        self.run_id = run_id
        self.wait_seconds = wait_seconds
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = client or httpx.Client(base_url=self.base_url, timeout=30.0, headers=headers)
        self._sleep = sleep

    @property
    def path(self) -> str:
        return f"/v1/runs/{self.run_id}/weights"

    def wait_for(self, step: int) -> ScorerWeights:
        """The weights of checkpoint `step`, waiting while it is queued or scoring."""
        return self._poll({"step": step}, f"checkpoint step {step}", accept_missing=False)

    def latest(self) -> ScorerWeights | None:
        """The newest scored checkpoint's weights, or None when nothing is scored yet."""
        return self._poll({}, "the latest weights", accept_missing=True)

    def close(self) -> None:
        self._client.close()

    def _poll(
        self, params: dict[str, Any], what: str, *, accept_missing: bool
    ) -> ScorerWeights | None:
        start = time.monotonic()
        pause = 0.5
        pending = FIRST_PENDING_POLL
        while True:
            try:
                response = self._client.get(self.path, params=params)
            except httpx.TransportError as exc:
                reason, delay = f"cannot reach {self.base_url} ({exc})", pause
            else:
                if response.status_code == 200:
                    return ScorerWeights.from_json(response.json())
                if response.status_code in (202, 404) and accept_missing:
                    return None
                if response.status_code == 409:
                    raise ScoringFailed(f"the scorer failed on {what}: {_detail(response)}")
                if response.status_code == 401:
                    raise Unauthorized(
                        f"the scorer at {self.base_url} refused the token: set scorer_token "
                        "(or SCORER_TOKEN) to the scorer's token"
                    )
                if response.status_code == 202:
                    # Poll soon at first (small checkpoints score in well under a second),
                    # then no more often than Retry-After asks.
                    reason = f"{what}: {_detail(response)}"
                    delay = min(pending, _retry_after(response))
                    pending *= 2
                else:
                    reason = f"HTTP {response.status_code} for {what}: {_detail(response)}"
                    delay = pause
            waited = time.monotonic() - start
            if waited >= self.wait_seconds:
                raise ScorerUnavailable(
                    f"gave up on {what} after {waited:.0f}s ({reason}): check that scorer_svc "
                    f"is running at {self.base_url} (scorer_http_url), that it is scoring "
                    "(GET /v1/runs/{id}/checkpoints, its log); or raise scorer_wait_seconds"
                )
            delay = min(delay, self.wait_seconds - waited)
            logger.log(
                logging.INFO if delay >= 1 else logging.DEBUG,
                "%s; waiting %.1fs (%.0fs of %.0fs)",
                reason,
                delay,
                waited,
                self.wait_seconds,
            )
            self._sleep(delay)
            pause = min(pause * 2, 10.0)


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("status") or body)
    return str(body)


def _retry_after(response: httpx.Response) -> float:
    try:
        return max(0.05, float(response.headers.get("Retry-After", "1")))
    except ValueError:
        return 1.0
