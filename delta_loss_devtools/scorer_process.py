"""The scorer as a background process on free loopback ports: used by the demo, the
benchmarks and the tests, so that each starts, waits for and stops it the same way."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import httpx

from delta_loss_devtools.children import die_with_parent
from delta_loss_devtools.waiting import wait_until


def memory_bytes(pid: int, field: str = "VmRSS") -> int:
    """A process's memory from /proc/PID/status: VmRSS now, VmHWM its peak."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Tls:
    """The scorer's certificate and key, and the CA file that verifies the certificate."""

    certfile: Path
    keyfile: Path
    ca_file: Path

    def flags(self) -> list[str]:
        return ["--tls-certfile", str(self.certfile), "--tls-keyfile", str(self.keyfile)]

    def verify(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))


class ScorerProcess:
    """`python -m scorer_svc serve` with its own data directory, output in log_path."""

    def __init__(
        self,
        data_dir: Path,
        *extra: str,
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
        prefix: Sequence[str] = (),
        tls: Tls | None = None,
        ranks: int = 1,
    ) -> None:
        """extra: more flags; env: variables over os.environ; prefix: what runs the command
        (e.g. taskset -c 1); tls: serve REST over HTTPS; ranks: processes under torchrun
        (one node, gloo on the CPU)."""
        self.data_dir = data_dir
        self.http_port = free_port()
        self.zmq_url = f"tcp://127.0.0.1:{free_port()}"
        self.tls = tls
        self.ranks = ranks
        scheme = "https" if tls is not None else "http"
        self.base_url = f"{scheme}://127.0.0.1:{self.http_port}"
        self.extra = list(extra) + (tls.flags() if tls is not None else [])
        self.env = env or {}
        self.prefix = list(prefix)
        self.log_path = log_path or data_dir / "scorer.log"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 300) -> Self:
        """Start and wait until /healthz answers."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                    str(self.ranks)] if self.ranks > 1 else []  # fmt: skip
        cmd = [
            *self.prefix, sys.executable, *launcher, "-m", "scorer_svc", "serve",
            "--http-port", str(self.http_port), "--zmq-url", self.zmq_url,
            "--data-dir", str(self.data_dir), "--device", "cpu", *self.extra,
        ]  # fmt: skip
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=die_with_parent
            )

        def healthy() -> bool:
            try:
                verify = self.tls.verify() if self.tls is not None else True
                response = httpx.get(f"{self.base_url}/healthz", timeout=1, verify=verify)
                return response.status_code == 200
            except httpx.HTTPError:
                return False

        try:
            wait_until(
                healthy, f"the scorer's /healthz (log: {self.log_path})", self, timeout=timeout
            )
        except BaseException:
            self.stop()  # never leave a half-started scorer behind
            raise
        return self

    def again(self, *extra: str) -> ScorerProcess:
        """A new, unstarted scorer on this one's data directory, ports and log, with the flags
        in extra (none by default): a restart."""
        twin = ScorerProcess(
            self.data_dir,
            *extra,
            env=self.env,
            log_path=self.log_path,
            prefix=self.prefix,
            tls=self.tls,
            ranks=self.ranks,
        )
        twin.http_port, twin.zmq_url, twin.base_url = self.http_port, self.zmq_url, self.base_url
        return twin

    def http(self) -> httpx.Client:
        """A client of its REST API, trusting its certificate and carrying its token."""
        token = self.env.get("SCORER_TOKEN")
        return httpx.Client(
            base_url=self.base_url,
            verify=self.tls.verify() if self.tls is not None else True,
            headers={"Authorization": f"Bearer {token}"} if token else {},
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int | None:
        """Signal the scorer and wait (kill after timeout); its exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
