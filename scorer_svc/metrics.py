"""Operations metrics in Prometheus' text format, served on /metrics.

The worker counts and times what it does as it does it; checkpoints by status and the queue
are read from the database at each scrape (so they are right after a restart, and for runs
another scorer on the same database keeps, they are this scorer's own). Each scorer has its
own registry: several apps in one process (tests) do not share series.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from scorer_svc.storage import checkpoints as checkpoint_store
from scorer_svc.storage.tables import STATUSES

# scoring one checkpoint: from a second (a small run) to an hour (100k samples of a 7B model)
SCORING_BUCKETS = (1, 2, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600)
WRITE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)


class ScorerMetrics:
    """What one scorer's worker reports, and its view of the database."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._view: _DatabaseView | None = None
        self.scoring_seconds = Histogram(
            "scorer_scoring_seconds",
            "Seconds spent scoring one checkpoint (every sample's loss)",
            buckets=SCORING_BUCKETS,
            registry=self.registry,
        )
        self.write_seconds = Histogram(
            "scorer_database_write_seconds",
            "Seconds spent storing one checkpoint's losses and window",
            buckets=WRITE_BUCKETS,
            registry=self.registry,
        )
        self.samples_per_second = Gauge(
            "scorer_samples_per_second",
            "Samples scored per second, for the last checkpoint scored",
            registry=self.registry,
        )
        self.samples = Counter(
            "scorer_samples_scored", "Samples scored, over every checkpoint", registry=self.registry
        )
        self.failures = Counter(
            "scorer_checkpoint_failures", "Checkpoints whose scoring failed", registry=self.registry
        )

    def scored(self, *, seconds: float, samples: int, write_seconds: float) -> None:
        self.scoring_seconds.observe(seconds)
        self.write_seconds.observe(write_seconds)
        self.samples.inc(samples)
        if seconds > 0:
            self.samples_per_second.set(samples / seconds)

    def failed(self) -> None:
        self.failures.inc()

    def watch_database(self, sessions: sessionmaker[Session], instance: str | None) -> None:
        """Report the checkpoints by status and the queue depth of this database, read at each
        scrape (in place of any database watched before)."""
        if self._view is not None:
            self.registry.unregister(self._view)
        self._view = _DatabaseView(sessions, instance)
        self.registry.register(self._view)


class _DatabaseView(Collector):
    def __init__(self, sessions: sessionmaker[Session], instance: str | None) -> None:
        self.sessions = sessions
        self.instance = instance

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            with self.sessions() as session:
                counts = checkpoint_store.count_checkpoints(session, instance=self.instance)
        except SQLAlchemyError:  # the worker's figures are still served, and this says why
            yield GaugeMetricFamily(
                "scorer_database_up", "Whether the database answered this scrape", value=0
            )
            return
        yield GaugeMetricFamily(
            "scorer_database_up", "Whether the database answered this scrape", value=1
        )
        by_status = GaugeMetricFamily(
            "scorer_checkpoints", "This scorer's checkpoints, by status", labels=["status"]
        )
        for status in STATUSES:
            by_status.add_metric([status], counts.get(status, 0))
        yield by_status
        yield GaugeMetricFamily(
            "scorer_queue_depth",
            "This scorer's checkpoints received or being scored",
            value=counts.get("received", 0) + counts.get("scoring", 0),
        )
