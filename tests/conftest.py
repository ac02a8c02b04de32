"""Fixtures shared by every test: a tiny model on disk, a small dataset, a live scorer."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from delta_loss_devtools.scorer_process import ScorerProcess
from delta_loss_devtools.tiny_model import build_tiny_model
from delta_loss_devtools.waiting import wait_until
from tests.support import leftovers
from tests.support.data import write_samples
from tests.support.postgres import PostgresCluster, postgres_bindir

ROOT = Path(__file__).resolve().parents[1]
LEFTOVER_WAIT_S = 60  # for processes told to stop at the end of the last test


def pytest_configure(config) -> None:
    """Every process the suite starts carries this run's mark (tests.support.leftovers)."""
    os.environ.setdefault(leftovers.MARK, f"{os.getpid()}-{time.time_ns()}")


def pytest_sessionfinish(session, exitstatus) -> None:
    """The run fails when a process it started is still alive once its tests are done (each
    is given LEFTOVER_WAIT_S to finish stopping); those are named and killed."""
    mark = os.environ.get(leftovers.MARK)
    if not mark or not sys.platform.startswith("linux"):
        return
    try:
        wait_until(lambda: not leftovers.marked(mark), "processes the tests started to end",
                   timeout=LEFTOVER_WAIT_S, every=0.2)  # fmt: skip
    except TimeoutError:
        alive = leftovers.marked(mark)
        leftovers.kill(alive)
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        lines = [f"  {pid}: {command[:300]}" for pid, command in sorted(alive.items())]
        message = "processes the tests started were still running (killed now):"
        if reporter is not None:
            reporter.write_line("\n".join([message, *lines]), red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session", autouse=True)
def scorer_roots(tmp_path_factory) -> Iterator[Path]:
    """Every scorer a test starts may read models and data from the tests' temporary folders
    (where the tiny model and every dataset are written), and nowhere else."""
    base = tmp_path_factory.getbasetemp()
    roots = json.dumps([str(base)])
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SCORER_MODEL_ROOT", roots)
        patch.setenv("SCORER_DATA_ROOT", roots)
        yield base


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), seed=0)


@pytest.fixture(scope="session")
def tiny_bf16_model(tmp_path_factory) -> Path:
    """The tiny model stored in bfloat16, as most real checkpoints are."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama-bf16"), seed=0, dtype="bfloat16")


@pytest.fixture
def dataset_file(tmp_path) -> Path:
    return write_samples(tmp_path / "train.json", 24)


@pytest.fixture
def scorer(tmp_path):
    """A started scorer; stopped (SIGTERM) after the test."""
    process = ScorerProcess(tmp_path / "scorer").start()
    yield process
    process.stop()


def _unavailable(why: str) -> None:
    """Skip, or fail in CI (where `.ci/run` installs PostgreSQL and the driver)."""
    if os.environ.get("CI"):
        pytest.fail(f"{why}; CI needs it (.ci/run installs it)")
    pytest.skip(why)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """One throwaway PostgreSQL server for the session (tests.support.postgres)."""
    bindir = postgres_bindir()
    if bindir is None:
        _unavailable("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("psycopg is not installed (pip install 'delta-loss-selector[postgres]')")
    assert bindir is not None
    cluster = PostgresCluster(bindir).start()
    yield cluster
    cluster.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    """The scorer's database, on each backend: a SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db' / 'scorer.db'}"
    return request.getfixturevalue("postgres_cluster").url()
