"""The metrics table: two writers of the same points at once both succeed (one upsert each),
the last value standing; on SQLite and PostgreSQL."""

import threading

from scorer_svc.storage import metrics as metric_store
from scorer_svc.storage import runs as run_store
from scorer_svc.storage.db import make_engine, make_sessionmaker
from tests.support.scorer import stored_run_config


def test_writers_of_the_same_points_at_once_never_collide(database_url):
    engine = make_engine(database_url)
    sessions = make_sessionmaker(engine)
    try:
        with sessions() as session:
            run_store.create_run(session, config=stored_run_config("run-w", 4), n_no_labels=0)
        failures: list[BaseException] = []
        for round_ in range(5):
            points = [metric_store.Point("loss", s, float(round_)) for s in range(200)]
            start = threading.Barrier(2)

            def write(points=points, start=start) -> None:
                try:
                    with sessions() as session:
                        run = run_store.get_run(session, run_id="run-w")
                        start.wait()
                        metric_store.store_metrics(session, run=run, points=points)
                except BaseException as exc:  # noqa: BLE001 - collected for the assertion
                    failures.append(exc)

            threads = [threading.Thread(target=write) for _ in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        assert failures == []
        with sessions() as session:
            run = run_store.get_run(session, run_id="run-w")
            history = metric_store.metric_history(session, run=run, key="loss")
        assert len(history) == 200 and {row.value for row in history} == {4.0}
    finally:
        engine.dispose()


def test_a_search_by_name_ignores_case_beyond_ascii(database_url):
    engine = make_engine(database_url)
    sessions = make_sessionmaker(engine)
    try:
        with sessions() as session:
            config = stored_run_config("run-u", 4, run_name="Ärger über Öl")
            run_store.create_run(session, config=config, n_no_labels=0)
            found, _ = run_store.search_runs(
                session, search=run_store.RunSearch(name="ärger ÜBER"), limit=10
            )
        assert [run.run_id for run in found] == ["run-u"]
    finally:
        engine.dispose()
