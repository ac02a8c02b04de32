"""A scorer in the trainer's own process, for tests: it implements
trainer_svc.scorer_client.ScorerClient, records what it is sent, and answers as a scorer that
has scored every checkpoint it was sent, with weights that depend on the step only."""

from __future__ import annotations

from typing import Any

import torch

from common.protocol import Hello
from trainer_svc.publisher import CheckpointUpload
from trainer_svc.weights_client import ScorerWeights


def fake_weights(step: int, n: int) -> torch.Tensor:
    """Distinct, step-dependent weights with some zeros, as the scorer might give."""
    w = torch.rand(n, generator=torch.Generator().manual_seed(step), dtype=torch.float64)
    w[: n // 4] = 0
    return w / w.sum()


class FakeScorer:
    """n_samples: how many weights each answer holds (the run's dataset size)."""

    def __init__(self, n_samples: int) -> None:
        self.n_samples = n_samples
        self.hellos: list[Hello] = []
        self.checkpoints: list[CheckpointUpload] = []  # in the order sent
        self.closed = False

    def register(self, hello: Hello) -> dict[str, Any]:
        self.hellos.append(hello)
        return {"ok": True, "status": "registered"}

    def send_checkpoint(self, checkpoint: CheckpointUpload) -> dict[str, Any]:
        self.checkpoints.append(checkpoint)
        return {"ok": True, "status": "queued"}

    def wait_for(self, step: int) -> ScorerWeights:
        """The weights of a checkpoint already sent (KeyError for any other step)."""
        sent = {c.step: c.update_index for c in self.checkpoints}
        return ScorerWeights(step, sent[step], fake_weights(step, self.n_samples), None)

    def latest(self) -> ScorerWeights | None:
        """The checkpoint before the last one sent: the one just sent is still scoring."""
        if len(self.checkpoints) < 2:
            return None
        previous = self.checkpoints[-2]
        weights = fake_weights(previous.step, self.n_samples)
        return ScorerWeights(previous.step, previous.update_index, weights, None)

    def close(self) -> None:
        self.closed = True
