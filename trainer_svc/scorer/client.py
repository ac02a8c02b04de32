"""The trainer's one view of the scorer, and what it does when the scorer fails.

`ScorerClient` is everything the recipe and the updates ask of the scorer: register the run,
send a checkpoint, wait for a checkpoint's weights, take the newest weights. `RemoteScorer`
is the real one: the hello and the checkpoints go over ZeroMQ (trainer_svc.scorer.publisher), the
weights come over REST (trainer_svc.scorer.weights), both under one retry policy
(trainer_svc.scorer.retry). Tests use delta_loss_devtools.fake_scorer.FakeScorer.

`scorer_failed` applies on_scorer_failure, at registration and at every update alike;
`run_lost` says what an unknown run means once the scorer had registered it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

from common.api.schemas import MetricPoint, RunEnding
from common.validation import is_loopback
from common.wire.curve import ClientKeys, load_client_keys
from common.wire.errors import ProtocolError, UnknownRun
from common.wire.protocol import Hello
from trainer_svc.config.train_config import OnFailure, TrainConfig
from trainer_svc.scorer.publisher import CheckpointPublisher, CheckpointUpload
from trainer_svc.scorer.retry import ScorerFailure, never
from trainer_svc.scorer.weights import ScorerWeights, WeightsClient

logger = logging.getLogger(__name__)

__all__ = [
    "OnFailure",
    "RemoteScorer",
    "RunLost",
    "ScorerClient",
    "ScorerFailure",
    "run_lost",
    "scorer_failed",
]


@runtime_checkable
class ScorerClient(Protocol):
    """What the trainer asks of the scorer. Each call raises a `ProtocolError` when the scorer
    refuses, fails or cannot be reached in time."""

    def register(self, hello: Hello) -> dict[str, Any]:
        """Registers the run (a repeated hello is answered `already_registered`)."""
        ...

    def send_checkpoint(self, checkpoint: CheckpointUpload) -> dict[str, Any]:
        """Hands the checkpoint over for scoring; returns the scorer's ack. Called from the
        trainer's sending thread (trainer_svc.scorer.sender), never while another call is made."""
        ...

    def cancel_send(self) -> None:
        """Ends a send_checkpoint in progress in another thread (raising StopRequested)."""
        ...

    def wait_for(self, step: int) -> ScorerWeights | None:
        """The weights of checkpoint `step`, once scored (None: the update draws over equal
        weights, as uniform sampling does)."""
        ...

    def latest(self) -> ScorerWeights | None:
        """The newest weights already scored, or None."""
        ...

    def ping(self, seconds: float) -> None:
        """Returns once the scorer answers; ScorerUnavailable when it does not within
        `seconds` (one try: the probe of a scorer known down, trainer_svc.scorer.outage)."""
        ...

    def end(self, status: RunEnding, detail: str | None = None) -> None:
        """Tell the scorer how the run ended; a failure to tell it is only logged."""
        ...

    def log_metrics(self, points: list[MetricPoint]) -> None:
        """Store logged values with the run (called from the metrics thread, at most
        MAX_METRICS_BATCH at a time); raises when they could not be stored."""
        ...

    def close(self) -> None: ...


class RemoteScorer:
    """scorer_svc over the network: its ZeroMQ address for the hello and the checkpoints, its
    REST API for the weights."""

    def __init__(
        self,
        *,
        zmq_url: str,
        http_url: str,
        run_id: str,
        wait_seconds: float,
        token: str | None = None,
        curve: ClientKeys | None = None,
        ca_file: str | None = None,
        stop_requested: Callable[[], bool] = never,
        sleep: Callable[[float], None] = time.sleep,
    ):
        """stop_requested (the recipe's SIGTERM flag) ends the wait for registration."""
        self.publisher = CheckpointPublisher(
            zmq_url, wait_seconds=wait_seconds, token=token, curve=curve, sleep=sleep
        )
        self.weights = WeightsClient(
            http_url, run_id, wait_seconds=wait_seconds, token=token, ca_file=ca_file, sleep=sleep
        )
        self.stop_requested = stop_requested
        if token is not None:
            warn_cleartext_token(http_url, zmq_url, curve=curve is not None)

    @classmethod
    def from_config(
        cls, cfg: TrainConfig, run_id: str, *, stop_requested: Callable[[], bool] = never
    ) -> RemoteScorer:
        curve = None
        if cfg.scorer_curve_secret_key_file and cfg.scorer_curve_server_key_file:
            curve = load_client_keys(
                cfg.scorer_curve_secret_key_file, cfg.scorer_curve_server_key_file
            )
        return cls(
            zmq_url=cfg.scorer_zmq_url,
            http_url=cfg.scorer_http_url,
            run_id=run_id,
            wait_seconds=cfg.scorer_wait_seconds,
            token=cfg.scorer_token,
            curve=curve,
            ca_file=cfg.scorer_ca_file,
            stop_requested=stop_requested,
        )

    def register(self, hello: Hello) -> dict[str, Any]:
        # the run's own token: it authorizes reporting the run's end to a scorer without a token
        self.weights.run_token = hello.run_token
        return self.publisher.hello(hello, stop_requested=self.stop_requested)

    def send_checkpoint(self, checkpoint: CheckpointUpload) -> dict[str, Any]:
        return self.publisher.send_checkpoint(checkpoint)

    def cancel_send(self) -> None:
        self.publisher.cancel()

    def wait_for(self, step: int) -> ScorerWeights:
        return self.weights.wait_for(step)

    def latest(self) -> ScorerWeights | None:
        return self.weights.latest()

    def ping(self, seconds: float) -> None:
        self.weights.ping(seconds)

    def end(self, status: RunEnding, detail: str | None = None) -> None:
        self.weights.end(status, detail)

    def log_metrics(self, points: list[MetricPoint]) -> None:
        self.weights.log_metrics(points)

    def close(self) -> None:
        self.publisher.close()
        self.weights.close()


def warn_cleartext_token(http_url: str, zmq_url: str, *, curve: bool) -> None:
    """Warn where the token would cross a network in clear."""
    if http_url.startswith("http://") and not is_loopback(urlsplit(http_url).hostname or ""):
        logger.warning(
            "the scorer token goes to %s in clear over plain HTTP: serve the scorer's REST "
            "over HTTPS (its tls_certfile) and use an https:// scorer_http_url",
            http_url,
        )
    zmq_host = zmq_url.split("://", 1)[-1].rsplit(":", 1)[0]
    if not curve and zmq_url.startswith("tcp://") and not is_loopback(zmq_host):
        logger.warning(
            "the scorer token goes to %s in clear in the ZeroMQ handshake (PLAIN): use CURVE "
            "(scorer_curve_secret_key_file, scorer_curve_server_key_file) across hosts",
            zmq_url,
        )


def scorer_failed(on_failure: OnFailure, what: str, error: ProtocolError, fallback: str) -> None:
    """on_scorer_failure for `what` ("registering run ...", "update 2 at step 4"), which
    failed with `error`: `fail` raises ScorerFailure; `uniform` logs it loudly and returns,
    the caller then doing `fallback` (said in the log)."""
    if on_failure == "fail":
        raise ScorerFailure(
            f"{what} failed: {error} (set on_scorer_failure: uniform to continue without "
            "the scorer)"
        ) from error
    logger.error(
        "!!! SCORER FAILURE: %s failed: %s -- %s (on_scorer_failure: uniform)",
        what,
        error,
        fallback,
    )


class RunLost(UnknownRun):
    """The scorer no longer knows a run it registered earlier in this training run."""


def run_lost(run_id: str, error: UnknownRun) -> RunLost:
    """The scorer answered `unknown_run` for a run it had registered: its database is gone."""
    lost = RunLost(
        f"the scorer no longer knows run {run_id}, which it registered at the start of this "
        f"run ({error}): its database was lost or replaced (another database_url or data_dir, "
        "or its file deleted), and this run's losses with it. To restart selection, resume "
        "from the last checkpoint: the run registers again, and selection starts again from "
        "the losses of the next update 1 (an epoch's first) it sends, the updates before that "
        "drawing uniformly with on_scorer_failure: uniform (the scorer refuses them "
        "otherwise); or train again from the start (a new output_dir, or "
        "overwrite_output_dir: true)"
    )
    lost.__cause__ = error
    return lost
