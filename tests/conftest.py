"""Fixtures shared by every test: a tiny model on disk, a small dataset, a live scorer."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.scorer_process import ScorerProcess
from devtools.tiny_model import build_tiny_model
from tests.support.data import write_samples
from tests.support.postgres import PostgresCluster, postgres_bindir

ROOT = Path(__file__).resolve().parents[1]


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
