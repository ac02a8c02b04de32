"""Shared pieces: core pinning, a scorer subprocess, medians, RSS, the dataset path."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def _alpaca() -> Path:
    """$BENCH_ALPACA, else shared/data next to the checkout, else /work/shared/data."""
    if os.environ.get("BENCH_ALPACA"):
        return Path(os.environ["BENCH_ALPACA"])
    name = Path("shared") / "data" / "alpaca_en_demo.json"
    for candidate in (ROOT.parent / name, Path("/work") / name):
        if candidate.is_file():
            return candidate
    return ROOT.parent / name


ALPACA = _alpaca()
# One thread per process: the trainer and the scorer each get one of the two cores.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
              "TQDM_DISABLE": "1"}  # fmt: skip
TRAINER_CORE, SCORER_CORE = 0, 1


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def pin(core: int) -> list[str]:
    """`taskset -c CORE` when taskset exists and the core does, else nothing."""
    if shutil.which("taskset") and core < (os.cpu_count() or 1):
        return ["taskset", "-c", str(core)]
    return []


def pin_self(core: int) -> None:
    if hasattr(os, "sched_setaffinity") and core < (os.cpu_count() or 1):
        os.sched_setaffinity(0, {core})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_bytes(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def python_env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {
        **os.environ,
        **ONE_THREAD,
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": f"{ROOT}{os.pathsep}{path}" if path else str(ROOT),
    }


class Scorer:
    """`python -m scorer_svc serve` pinned to the scorer's core, on free loopback ports."""

    def __init__(self, data_dir: Path, *extra: str, core: int = SCORER_CORE) -> None:
        self.data_dir = data_dir
        self.http_port = free_port()
        self.zmq_url = f"tcp://127.0.0.1:{free_port()}"
        self.base_url = f"http://127.0.0.1:{self.http_port}"
        self.extra = list(extra)
        self.core = core
        self.proc: subprocess.Popen | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}.log"

    def __enter__(self) -> Scorer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 120) -> Scorer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            *pin(self.core), sys.executable, "-m", "scorer_svc", "serve",
            "--http-port", str(self.http_port), "--zmq-url", self.zmq_url,
            "--data-dir", str(self.data_dir), "--device", "cpu", "--log-level", "WARNING",
            *self.extra,
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=python_env()
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"scorer exited: {self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"scorer not healthy in {timeout}s: {self.log_path}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss(self, field: str = "VmRSS") -> int:
        return rss_bytes(self.pid, field)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wait_scored(client: httpx.Client, run_id: str, step: int) -> float:
    """Seconds from the ack to the weights being served, measured without disturbing the
    scorer: poll the checkpoint list every 0.25 s (an HTTP request every few ms would take
    the scorer's CPU), then (finished_at - received_at) from the scorer's own clock, which
    it stamps just before the ack and just after the losses are committed, plus the time
    of the first /weights request (octet-stream), which builds the weights."""
    while True:
        rows = client.get(f"/v1/runs/{run_id}/checkpoints").json()
        row = next(r for r in rows if r["step"] == step)
        if row["status"] == "failed":
            raise RuntimeError(f"step {step} failed: {row['error']}")
        if row["status"] == "scored":
            break
        time.sleep(0.25)
    start = time.perf_counter()
    r = client.get(
        f"/v1/runs/{run_id}/weights",
        params={"step": step},
        headers={"Accept": "application/octet-stream"},
    )
    served = time.perf_counter() - start
    if r.status_code != 200:
        raise RuntimeError(f"weights of step {step}: HTTP {r.status_code} {r.text[:300]}")
    scored = datetime.fromisoformat(row["finished_at"]) - datetime.fromisoformat(row["received_at"])
    return scored.total_seconds() + served
