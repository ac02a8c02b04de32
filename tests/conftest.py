"""Fixtures shared by every test: a tiny model on disk, a small dataset, a live scorer."""

from __future__ import annotations

from pathlib import Path

import pytest

from devtools.scorer_process import ScorerProcess
from devtools.tiny_model import build_tiny_model
from tests.support.data import write_samples

ROOT = Path(__file__).resolve().parents[1]


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
