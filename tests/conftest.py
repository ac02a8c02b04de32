"""Shared fixtures: a tiny model on disk, a small dataset, free ports, a real scorer process."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from devtools.scorer_process import ScorerProcess, free_port  # noqa: F401 - used by tests
from devtools.tiny_model import build_tiny_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), seed=0)


def make_samples(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Instruction pairs of very different lengths (a few chars to a few hundred)."""
    rng = random.Random(seed)
    samples = []
    for _ in range(n):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        pad = " ".join(
            rng.choice(["please", "kindly", "now"]) for _ in range(rng.choice([0, 2, 40]))
        )
        samples.append(
            {"instruction": f"Add {a} and {b}. {pad}".strip(), "input": "", "output": str(a + b)}
        )
    return samples


@pytest.fixture
def dataset_file(tmp_path) -> Path:
    path = tmp_path / "train.json"
    path.write_text(json.dumps(make_samples(24)))
    return path


@pytest.fixture
def scorer(tmp_path):
    """A started scorer; stopped (SIGTERM) after the test."""
    process = ScorerProcess(tmp_path / "scorer").start()
    yield process
    process.stop()


def zmq_request(url: str, frames: list, timeout_ms: int = 60_000) -> dict | list[bytes]:
    """Send one request over a fresh DEALER; return the decoded reply frames' JSON."""
    import zmq

    context = zmq.Context.instance()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(url)
    try:
        sock.send_multipart(frames, copy=False)
        if not sock.poll(timeout_ms):
            raise TimeoutError(f"no reply from {url} in {timeout_ms} ms")
        reply = sock.recv_multipart()
    finally:
        sock.close(0)
    assert len(reply) == 1, f"a reply is one frame, got {len(reply)}"
    return json.loads(reply[0])
