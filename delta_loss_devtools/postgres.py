"""A throwaway PostgreSQL cluster, for the tests and the benchmarks: initdb into a temporary
folder, a server on a free loopback port (pg_ctl), a fresh database per url(), removed at
stop().

Found through `pg_config --bindir`, /usr/lib/postgresql/*/bin or the PATH (Debian's
`postgresql` package). Run as root, the server runs as the `postgres` user, as PostgreSQL
requires.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from delta_loss_devtools.scorer_process import free_port


def postgres_bindir() -> Path | None:
    config = shutil.which("pg_config")
    if config:
        found = subprocess.run([config, "--bindir"], capture_output=True, text=True, check=False)
        path = Path(found.stdout.strip())
        if (path / "initdb").is_file():
            return path
    for found_dir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(found_dir) / "initdb").is_file():
            return Path(found_dir)
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PostgresCluster:
    """start() makes and starts it; url(name) is a new database's SQLAlchemy URL; halt() and
    resume() stop and start its server (a restart); stop() removes it."""

    def __init__(self, bindir: Path, *, durable: bool = False):
        """durable: fsync as a real server does (the benchmarks); else fsync=off (the tests)."""
        self.bindir = bindir
        self.durable = durable
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="pg-cluster-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._as_postgres = os.geteuid() == 0
        self._count = 0

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {done.stdout}{done.stderr}")
        return done

    def start(self) -> PostgresCluster:
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "--auth=trust", "-U", "postgres", "-E", "UTF8")
        self.resume()
        return self

    def halt(self) -> None:
        """Stop the server as an administrator does (pg_ctl -m fast: its sessions end with an
        administrator shutdown, 57P01), keeping the cluster; resume() starts it again."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def resume(self) -> None:
        """Start the server (again) on its port, waiting until it takes connections."""
        options = f"-p {self.port} -h 127.0.0.1 -k {self.root}"
        if not self.durable:
            options += " -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.log), "-w", "start")

    def url(self, name: str | None = None) -> str:
        """A new, empty database's URL (psycopg 3)."""
        self._count += 1
        name = name or f"test_{self._count}"
        self._run(
            "psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-q",
            "-c", f'CREATE DATABASE "{name}"',
        )  # fmt: skip
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
