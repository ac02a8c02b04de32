"""Uniform sampling in the scorer's place: the baseline Delta Loss is compared against.

Every update but the run's first draws its segment with torch.multinomial over equal weights,
exactly as a Delta Loss update draws over the scorer's; the first draws randperm(N), as with
the scorer. So a uniform run trains the same number of samples per segment, with the same
warmup and the same seeds; only the weights differ. Nothing is sent anywhere.
"""

from __future__ import annotations

from typing import Any

import torch

from common.protocol import Hello
from trainer_svc.snapshot import CheckpointUpload
from trainer_svc.weights_client import ScorerWeights


class UniformSelection:
    """A ScorerClient whose weights are uniform over the run's N samples."""

    def __init__(self) -> None:
        self.n_samples: int | None = None
        self.sent: dict[int, int] = {}  # step -> update index, of each checkpoint "sent"

    def register(self, hello: Hello) -> dict[str, Any]:
        self.n_samples = hello.n_samples
        return {"ok": True, "status": "registered"}

    def send_checkpoint(self, checkpoint: CheckpointUpload) -> dict[str, Any]:
        self.sent[checkpoint.step] = checkpoint.update_index
        return {"ok": True, "status": "queued"}

    def cancel_send(self) -> None:
        """Nothing is ever in flight."""

    def wait_for(self, step: int) -> ScorerWeights:
        return self._weights(step)

    def latest(self) -> ScorerWeights | None:
        return self._weights(max(self.sent)) if self.sent else None

    def ping(self, seconds: float) -> None:
        """Always there."""

    def end(self, status: str, detail: str | None = None) -> None:
        """No scorer to tell."""

    def close(self) -> None:
        """Nothing to close."""

    def _weights(self, step: int) -> ScorerWeights:
        if self.n_samples is None:
            raise RuntimeError("weights asked for before the run registered")
        weights = torch.full((self.n_samples,), 1.0 / self.n_samples, dtype=torch.float64)
        return ScorerWeights(step, self.sent.get(step, 1), weights, None)
