"""What the routes read: settings, sessions, the weights cache, the failures the database
could not store, and the services built on them once (run texts, rankings). Built from a
database alone; the threads that fill it are not part of it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import InitVar, dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from scorer_svc.api.rankings import Rankings
from scorer_svc.api.run_texts import RunTexts
from scorer_svc.config import Settings
from scorer_svc.metrics import ScorerMetrics
from scorer_svc.scoring.progress import ScoringProgress
from scorer_svc.scoring.ranks import RankGroup
from scorer_svc.scoring.run_dataset import DatasetReader
from scorer_svc.scoring.weights import WeightsCache
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
    # how runs' datasets are read again for their text: the worker's registry's reader, when
    # one runs; None: one of these settings' own
    datasets: InitVar[DatasetReader | None] = None

    # what the API, the worker and the intake have lately seen of the database (its errors)
    database: DatabaseStatus = field(init=False)
    # runs' sample texts, read again from their datasets and checked against their fingerprints
    run_texts: RunTexts = field(init=False)
    # scored checkpoints' loss reductions and rankings, from the weights cache's initial losses
    rankings: Rankings = field(init=False)

    def __post_init__(self, datasets: DatasetReader | None) -> None:
        self.database = status_of(self.sessions)
        self.metrics.watch_database(self.sessions, self.instance)
        self.run_texts = RunTexts(DatasetReader.of(self.settings) if datasets is None else datasets)
        self.rankings = Rankings(self.weights)
