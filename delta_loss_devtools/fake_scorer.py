"""A scorer in the trainer's own process, for tests: it implements
trainer_svc.scorer.client.ScorerClient, records what it is sent, and answers as a scorer that
has scored every checkpoint it was sent, with weights that depend on the step only."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from common.wire.protocol import Hello
from trainer_svc.scorer.publisher import CheckpointUpload
from trainer_svc.scorer.weights import ScorerWeights

# The weights a fake scorer gives a checkpoint: (its step, N) -> N weights summing to 1.
WeightsRule = Callable[[int, int], torch.Tensor]


def fake_weights(step: int, n: int) -> torch.Tensor:
    """Distinct, step-dependent weights with some zeros, as the scorer might give."""
    w = torch.rand(n, generator=torch.Generator().manual_seed(step), dtype=torch.float64)
    w[: n // 4] = 0
    return w / w.sum()


def uniform_weights(step: int, n: int) -> torch.Tensor:
    """Every sample alike: plain uniform sampling."""
    return torch.full((n,), 1.0 / n, dtype=torch.float64)


class FakeScorer:
    """n_samples: how many weights each answer holds (the run's dataset size); weights: the
    rule that gives a checkpoint its weights (a subclass may override score instead)."""

    def __init__(self, n_samples: int, weights: WeightsRule = fake_weights) -> None:
        self.n_samples = n_samples
        self.weights = weights
        self.hellos: list[Hello] = []
        self.checkpoints: list[CheckpointUpload] = []  # in the order sent
        self.scored: dict[int, ScorerWeights] = {}  # by step
        self.pings: list[float] = []  # the seconds each probe was given
        self.ended: list[tuple[str, str | None]] = []  # each end told: (status, detail)
        self.metrics: list[Any] = []  # each MetricPoint logged, in the order sent
        self.closed = False

    def register(self, hello: Hello) -> dict[str, Any]:
        self.hellos.append(hello)
        return {"ok": True, "status": "registered"}

    def send_checkpoint(self, checkpoint: CheckpointUpload) -> dict[str, Any]:
        self.checkpoints.append(checkpoint)
        self.scored[checkpoint.step] = self.score(checkpoint)
        return {"ok": True, "status": "queued"}

    def cancel_send(self) -> None:
        """Sends here never wait, so there is nothing to end."""

    def score(self, checkpoint: CheckpointUpload) -> ScorerWeights:
        values = self.weights(checkpoint.step, self.n_samples)
        return ScorerWeights(checkpoint.step, checkpoint.update_index, values, None)

    def wait_for(self, step: int) -> ScorerWeights:
        """The weights of a checkpoint already sent (KeyError for any other step)."""
        return self.scored[step]

    def latest(self) -> ScorerWeights | None:
        """The last checkpoint sent (the fake scores at once; an async update asks before it
        sends its own)."""
        if not self.checkpoints:
            return None
        return self.scored[self.checkpoints[-1].step]

    def ping(self, seconds: float) -> None:
        """Always answers (a subclass may fail instead)."""
        self.pings.append(seconds)

    def end(self, status: str, detail: str | None = None) -> None:
        self.ended.append((status, detail))

    def log_metrics(self, points: list[Any]) -> None:
        self.metrics.extend(points)

    def close(self) -> None:
        self.closed = True
