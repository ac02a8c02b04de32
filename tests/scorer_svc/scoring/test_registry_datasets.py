"""The registry's parts the API shares: the reader of a run's dataset (the same access policy
for the worker's tokenization and the API's sample texts), and work done once per key."""

import threading
from pathlib import Path

from scorer_svc.api.state import ApiState
from scorer_svc.config import Settings
from scorer_svc.scoring.registry import Registry
from scorer_svc.scoring.single_flight import SingleFlight
from scorer_svc.storage.db import make_engine, make_sessionmaker
from scorer_svc.storage.failures import UnrecordedFailures


def test_the_api_reads_datasets_through_the_registrys_reader(tmp_path: Path):
    settings = Settings(data_dir=tmp_path, device="cpu")
    registry = Registry(settings)
    assert registry.access is registry.runs.datasets.access is registry.models.access
    engine = make_engine(settings.resolved_database_url)
    try:
        sessions = make_sessionmaker(engine)
        shared = ApiState(settings, sessions, UnrecordedFailures(), datasets=registry.runs.datasets)
        assert shared.run_texts.reader is registry.runs.datasets
        alone = ApiState(settings, sessions, UnrecordedFailures())  # a database alone
        assert alone.run_texts.reader.access == registry.access  # the same settings' policy
    finally:
        engine.dispose()


def test_single_flight_runs_a_key_once_at_a_time_and_other_keys_alongside():
    flight = SingleFlight()
    inside: dict[str, int] = {"a": 0, "b": 0}
    most: dict[str, int] = {"a": 0, "b": 0}
    guard = threading.Lock()

    both_inside = threading.Event()  # the first a and the first b are in at once

    def work(key: str) -> None:
        with flight(key):
            with guard:
                inside[key] += 1
                most[key] = max(most[key], inside[key])
                both = inside["a"] and inside["b"]
                seen.append(bool(both))
                if both:
                    both_inside.set()
            assert both_inside.wait(300), "a and b were never computed together"
            with guard:
                inside[key] -= 1

    seen: list[bool] = []
    threads = [threading.Thread(target=work, args=(key,)) for key in "abab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most == {"a": 1, "b": 1}  # one thread at a time per key
    assert any(seen)  # a and b computed at the same time
    assert len(flight) == 0  # nothing kept once done
