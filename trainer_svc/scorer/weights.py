"""Reads sampling weights from the scorer's REST API (GET /v1/runs/{id}/weights) through its
typed client (common.api.client).

`wait_for(step)` polls until the checkpoint of that step is scored: 202 means "not yet", polled
soon at first (0.05 s, doubled) and then as often as Retry-After says. `latest()` takes the
newest weights already available, or None. Network errors and other answers are retried under
the trainer's retry policy (trainer_svc.scorer.retry) up to the configured wait; then
`ScorerUnavailable` says what to check. 409 (scoring failed), 401, a 404 for an unknown run
(`UnknownRun`) and an HTTPS certificate that does not verify are not retried. `ping` asks
/healthz once. `end` reports the run's end with the run's own token (`run_token`, from its
hello), which a scorer without a token asks for.
"""

from __future__ import annotations

import itertools
import logging
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import torch

from common.api.client import (
    ApiError,
    ApiUnauthorized,
    Conflict,
    NotFound,
    NotScoredYet,
    ScorerApi,
)
from common.api.schemas import MetricPoint, RunEnding, WeightsBody
from common.wire.errors import ProtocolError, ScorerUnavailable, Unauthorized, UnknownRun
from trainer_svc.scorer.retry import NotYet, RetryPolicy

logger = logging.getLogger(__name__)


FIRST_PENDING_POLL = 0.05
END_TIMEOUT_SECONDS = 5.0  # telling the scorer the run ended holds up the run's end no longer
METRICS_TIMEOUT_SECONDS = 10.0  # one batch of metrics (sent from their own thread)


class ScoringFailed(ProtocolError):
    """The scorer could not score the checkpoint (409): its error is in the message."""

    code = "scoring_failed"


@dataclass(frozen=True)
class ScorerWeights:
    step: int
    update_index: int
    weights: torch.Tensor  # float64, one per sample, as the JSON body gives them
    window: dict[str, Any] | None  # {t, T, u, start, end, truncated_at}; None for the initial
    # the mean loss reduction inside the window and outside it (None without a window)
    delta_in_window: float | None = None
    delta_outside: float | None = None
    # under a scoring budget: samples measured at the checkpoint, the mean age of the others
    n_measured: int | None = None
    mean_age: float | None = None

    @classmethod
    def from_body(cls, body: WeightsBody) -> ScorerWeights:
        window = None
        if body.window is not None:
            window = {"t": body.t, "T": body.T, "u": body.u, **body.window.model_dump()}
        weights = torch.tensor(body.weights, dtype=torch.float64)
        return cls(
            body.step,
            body.update_index,
            weights,
            window,
            body.delta_mean_in_window,
            body.delta_mean_outside,
            body.n_measured,
            body.mean_age,
        )


class UntrustedCertificate(ProtocolError):
    """The scorer's HTTPS certificate does not verify against the trusted CAs."""

    code = "untrusted_certificate"


class WeightsClient:
    def __init__(
        self,
        base_url: str,
        run_id: str,
        *,
        wait_seconds: float,
        token: str | None = None,
        run_token: str | None = None,
        ca_file: str | None = None,
        client: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        """run_token: the run's own token, as its hello carries it (None: unknown yet).
        ca_file: the CA bundle (PEM) an https scorer's certificate must verify against; None:
        httpx's default bundle (certifi)."""
        self.base_url = base_url.rstrip("/")
        self.run_id = run_id
        self.run_token = run_token
        self.ca_file = ca_file
        self.retry = RetryPolicy(wait_seconds, sleep=sleep)
        self.api = ScorerApi(
            self.base_url, token=token, ca_file=ca_file, timeout=30.0, client=client
        )
        # the metrics thread's own connection: the training thread's polls never wait on it
        self.metrics_api = ScorerApi(
            self.base_url, token=token, ca_file=ca_file, timeout=METRICS_TIMEOUT_SECONDS,
            client=client,
        )  # fmt: skip

    def wait_for(self, step: int) -> ScorerWeights:
        """The weights of checkpoint `step`, waiting while it is queued or scoring."""
        got = self._poll(step, f"checkpoint step {step}", accept_missing=False)
        assert got is not None  # a missing checkpoint is retried, never returned
        return got

    def latest(self) -> ScorerWeights | None:
        """The newest scored checkpoint's weights, or None when nothing is scored yet."""
        return self._poll(None, "the latest weights", accept_missing=True)

    def ping(self, seconds: float) -> None:
        """One GET /healthz, waiting `seconds` at most: ScorerUnavailable unless it is 200."""
        try:
            self.api.health(timeout=seconds)
        except httpx.TransportError as exc:
            raise ScorerUnavailable(f"no answer from {self.base_url}/healthz ({exc})") from exc
        except ApiError as exc:
            raise ScorerUnavailable(
                f"{self.base_url}/healthz answered HTTP {exc.status}: {exc.detail}"
            ) from exc

    def end(self, status: RunEnding, detail: str | None = None) -> None:
        """Tell the scorer how the run ended (once, not retried: the run's end must not wait
        on the scorer); a failure to tell it is logged."""
        try:
            self.api.end_run(
                self.run_id,
                status,
                detail,
                run_token=self.run_token,
                timeout=END_TIMEOUT_SECONDS,
            )
        except Exception as exc:  # an old scorer, a proxy's page: the run has ended all the same
            logger.warning(
                "could not tell the scorer at %s that run %s %s: %s",
                self.base_url, self.run_id, status, exc,
            )  # fmt: skip

    def log_metrics(self, points: list[MetricPoint]) -> None:
        """Store logged values with the run (one try; the metrics thread tries again later)."""
        self.metrics_api.log_metrics(self.run_id, points, run_token=self.run_token)

    def close(self) -> None:
        self.api.close()
        self.metrics_api.close()

    def _poll(self, step: int | None, what: str, *, accept_missing: bool) -> ScorerWeights | None:
        pending = itertools.count()  # 202s so far: the pause they ask for grows with them

        def attempt(number: int, seconds_left: float) -> ScorerWeights | None:
            try:
                body = self.api.weights(self.run_id, step=step)
            except httpx.TransportError as exc:
                if _certificate_refused(exc):
                    raise UntrustedCertificate(
                        f"the certificate of {self.base_url} does not verify against "
                        + (f"the CA file {self.ca_file}" if self.ca_file else "the default CAs")
                        + f" ({exc}): set scorer_ca_file to the CA that signed the scorer's "
                        "certificate (its tls_certfile, when self-signed)"
                    ) from exc
                raise NotYet(f"cannot reach {self.base_url} ({exc})") from exc
            except ApiError as exc:
                return self._answer(exc, what, accept_missing, pending)
            return ScorerWeights.from_body(body)

        return self.retry.run(
            attempt,
            waiting_for=f"the weights of {what} from {self.base_url}",
            advice=(
                f"that scorer_svc is running at {self.base_url} (scorer_http_url) and that it "
                f"is scoring (GET /v1/runs/{self.run_id}/checkpoints, its log)"
            ),
        )

    def _answer(
        self, error: ApiError, what: str, accept_missing: bool, pending: Iterator[int]
    ) -> ScorerWeights | None:
        """None (nothing yet, when that is accepted), or what to do instead of the weights."""
        if isinstance(error, NotFound) and error.unknown_run:
            raise UnknownRun(f"the scorer at {self.base_url} has no run {self.run_id}")
        if isinstance(error, NotScoredYet | NotFound) and accept_missing:
            return None
        if isinstance(error, Conflict):
            raise ScoringFailed(f"the scorer failed on {what}: {error.detail} (its log says more)")
        if isinstance(error, ApiUnauthorized):
            raise Unauthorized(
                f"the scorer at {self.base_url} refused the token: set scorer_token "
                "(or SCORER_TOKEN) to the scorer's token"
            )
        if isinstance(error, NotScoredYet):
            # Small checkpoints score in well under a second: poll soon at first, then no
            # more often than Retry-After asks.
            asked = 1.0 if error.retry_after is None else max(0.05, error.retry_after)
            pause = min(FIRST_PENDING_POLL * 2 ** next(pending), asked)
            level = logging.INFO if pause >= 1 else logging.DEBUG
            raise NotYet(error.detail, pause=pause, level=level)
        raise NotYet(f"HTTP {error.status}: {error.detail}")


def _certificate_refused(error: BaseException) -> bool:
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
