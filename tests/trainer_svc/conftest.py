"""Fixtures for trainer_svc tests: a small demo dataset and fake scorer clients."""

from __future__ import annotations

import pytest
import torch

from devtools.demo_data import write_dataset
from trainer_svc.weights_client import ScorerWeights


@pytest.fixture
def demo_file(tmp_path):
    return write_dataset(tmp_path / "demo.json", n=32, seed=1)


def fake_weights(step: int, n: int) -> torch.Tensor:
    """Distinct, step-dependent weights with some zeros, as the scorer might give."""
    w = torch.rand(n, generator=torch.Generator().manual_seed(step), dtype=torch.float64)
    w[: n // 4] = 0
    return w / w.sum()


class FakePublisher:
    """Records what would go over ZeroMQ."""

    def __init__(self):
        self.hellos = []
        self.checkpoints = []

    def hello(self, hello):
        self.hellos.append(hello)
        return {"ok": True, "status": "registered"}

    def send_checkpoint(self, **kwargs):
        self.checkpoints.append(kwargs)
        return {"ok": True, "status": "queued"}


class FakeWeights:
    """Answers as a scorer that has scored every checkpoint it was sent."""

    def __init__(self, n: int, publisher: FakePublisher):
        self.n = n
        self.publisher = publisher

    def wait_for(self, step):
        sent = {c["step"]: c["update_index"] for c in self.publisher.checkpoints}
        return ScorerWeights(step, sent[step], fake_weights(step, self.n), None)

    def latest(self):
        if len(self.publisher.checkpoints) < 2:
            return None
        previous = self.publisher.checkpoints[-2]
        step = previous["step"]
        return ScorerWeights(step, previous["update_index"], fake_weights(step, self.n), None)
