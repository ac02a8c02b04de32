"""Uniform sampling in the scorer's place: the baseline Delta Loss is compared against.

It gives no weights, and an update without weights draws its segment with torch.multinomial
over equal weights (trainer_svc.training.updates), exactly as a Delta Loss update draws over the
scorer's; the run's first update draws randperm(N), as with the scorer. So a uniform run trains
the same number of samples per segment, with the same warmup and the same seeds; only the
weights differ, and its selections.jsonl rows say `source: uniform`. Nothing is sent anywhere
(each update still takes the checkpoint snapshot the hand-off would send: a copy of the
trainable tensors, in its wall time).
"""

from __future__ import annotations

from typing import Any

from common.wire.protocol import Hello
from trainer_svc.scorer.weights import ScorerWeights
from trainer_svc.training.snapshot import CheckpointUpload


class UniformSelection:
    """A ScorerClient with no weights to give: every update draws uniformly."""

    def register(self, hello: Hello) -> dict[str, Any]:
        return {"ok": True, "status": "registered"}

    def send_checkpoint(self, checkpoint: CheckpointUpload) -> dict[str, Any]:
        return {"ok": True, "status": "queued"}

    def cancel_send(self) -> None:
        """Nothing is ever in flight."""

    def wait_for(self, step: int) -> ScorerWeights | None:
        return None

    def latest(self) -> ScorerWeights | None:
        return None

    def ping(self, seconds: float) -> None:
        """Always there."""

    def end(self, status: str, detail: str | None = None) -> None:
        """No scorer to tell."""

    def log_metrics(self, points: list[Any]) -> None:
        """No scorer to keep them: the Trainer's own log and report_to trackers have them."""

    def close(self) -> None:
        """Nothing to close."""
