"""Fixtures shared by every test: a tiny model on disk, a small dataset, a live scorer."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.scorer_process import ScorerProcess
from devtools.tiny_model import build_tiny_model
from tests.support.data import write_samples

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


@pytest.fixture
def dataset_file(tmp_path) -> Path:
    return write_samples(tmp_path / "train.json", 24)


@pytest.fixture
def scorer(tmp_path):
    """A started scorer; stopped (SIGTERM) after the test."""
    process = ScorerProcess(tmp_path / "scorer").start()
    yield process
    process.stop()
