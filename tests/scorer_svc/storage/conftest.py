"""What the database-failure tests share: the scorer's API state on a SQLite file, its
DatabaseStatus on a clock that stands still until the test moves it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from scorer_svc.api.state import ApiState
from scorer_svc.config import Settings
from scorer_svc.storage.db import make_engine, make_sessionmaker
from scorer_svc.storage.failures import UnrecordedFailures

RETRY_AFTER_SECONDS = 3


class Clock:
    """The DatabaseStatus's clock: the line a minute is the test's to bring about."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class ClockedApi:
    settings: Settings
    engine: Engine
    state: ApiState
    clock: Clock
    database_file: Path


@pytest.fixture
def clocked_api(tmp_path: Path) -> Iterator[ClockedApi]:
    settings = Settings(data_dir=tmp_path / "data", retry_after_seconds=RETRY_AFTER_SECONDS)
    engine = make_engine(settings.resolved_database_url)
    state = ApiState(settings, make_sessionmaker(engine), UnrecordedFailures())
    clock = Clock()
    state.database.clock = clock
    try:
        yield ClockedApi(settings, engine, state, clock, tmp_path / "data" / "scorer.db")
    finally:
        engine.dispose()
