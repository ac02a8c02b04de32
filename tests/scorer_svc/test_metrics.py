"""The metrics registry: the worker's figures are served even when the database is not."""

from prometheus_client import generate_latest
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from scorer_svc.metrics import ScorerMetrics


def test_a_database_that_does_not_answer_leaves_the_other_figures(tmp_path):
    metrics = ScorerMetrics()
    metrics.scored(seconds=2.0, samples=10, write_seconds=0.1)
    missing = create_engine(f"sqlite:///{tmp_path / 'absent' / 'scorer.db'}")
    metrics.watch_database(sessionmaker(missing), instance="here")
    text = generate_latest(metrics.registry).decode()
    assert "scorer_database_up 0.0" in text
    assert "scorer_samples_scored_total 10.0" in text and "scorer_samples_per_second 5.0" in text
    assert "scorer_queue_depth" not in text  # not known: not reported as 0


def test_watching_another_database_replaces_the_first(tmp_path):
    metrics = ScorerMetrics()
    engine = create_engine(f"sqlite:///{tmp_path / 'absent' / 'scorer.db'}")
    metrics.watch_database(sessionmaker(engine), instance=None)
    metrics.watch_database(sessionmaker(engine), instance=None)  # no duplicate series
    assert generate_latest(metrics.registry).decode().count("scorer_database_up 0.0") == 1
