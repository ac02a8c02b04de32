"""What the routes read: settings, sessions, the weights cache and the failures the database
could not store. Built from a database alone; the threads that fill it are not part of it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from cachetools import LRUCache, TTLCache
from sqlalchemy.orm import Session, sessionmaker

from common.data.datasets import Row, rows_size
from scorer_svc.config import Settings
from scorer_svc.metrics import ScorerMetrics
from scorer_svc.scoring.progress import ScoringProgress
from scorer_svc.scoring.ranks import RankGroup
from scorer_svc.scoring.weights import RunKey, WeightsCache
from scorer_svc.storage.failures import UnrecordedFailures
from scorer_svc.storage.outages import DatabaseStatus, status_of


@dataclass
class ApiState:
    settings: Settings
    sessions: sessionmaker[Session]
    # the worker's, when one runs: the same object must be handed to both
    failures: UnrecordedFailures
    weights: WeightsCache = field(default_factory=WeightsCache)
    group: RankGroup | None = None  # the scorer's other ranks, under torchrun
    # this scorer's name: it deletes only its own runs; None (a state built from a database
    # alone) deletes none
    instance: str | None = None
    metrics: ScorerMetrics = field(default_factory=ScorerMetrics)  # the worker's, when one runs
    progress: ScoringProgress = field(default_factory=ScoringProgress)  # the worker's too
    # whether the scoring thread runs; None: a state served without a worker (a database alone)
    worker_alive: Callable[[], bool] | None = None
    # training rows of runs' datasets read again for their text, checked against the run's
    # fingerprint (api/routes/samples.py), by run and fingerprint, within ~256 M characters
    dataset_rows: LRUCache[tuple[RunKey, str], tuple[Row, ...]] = field(
        default_factory=lambda: LRUCache(256 << 20, getsizeof=rows_size)
    )
    # datasets that could not be served (403, 409): not read again for 30 s
    dataset_refusals: TTLCache[tuple[RunKey, str], Exception] = field(
        default_factory=lambda: TTLCache(maxsize=256, ttl=30.0)
    )

    # what the API, the worker and the intake have lately seen of the database (its errors)
    database: DatabaseStatus = field(init=False)

    def __post_init__(self) -> None:
        self.database = status_of(self.sessions)
        self.metrics.watch_database(self.sessions, self.instance)
