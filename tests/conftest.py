"""Shared fixtures: a tiny model on disk, a small dataset, free ports, a real scorer process."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from common.tiny_model import build_tiny_model

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ScorerProcess:
    """`python -m scorer_svc serve` on free loopback ports, with its own data directory."""

    def __init__(self, data_dir: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.http_port = free_port()
        self.zmq_url = f"tcp://127.0.0.1:{free_port()}"
        self.base_url = f"http://127.0.0.1:{self.http_port}"
        self.extra = list(extra)
        self.env = env or {}
        self.proc: subprocess.Popen | None = None
        self.log_path = data_dir / "scorer.log"

    def start(self, timeout: float = 60) -> ScorerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "scorer_svc",
            "serve",
            "--http-port",
            str(self.http_port),
            "--zmq-url",
            self.zmq_url,
            "--data-dir",
            str(self.data_dir),
            "--device",
            "cpu",
            *self.extra,
        ]
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"scorer exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"scorer did not become healthy in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


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
