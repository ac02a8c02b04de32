"""A database error that is no outage, no damage and no refusal (a query, a statement or the
scorer at fault: kind `error`) is still answered 503 JSON by the API, but the first of a run
is logged with its traceback, so that a mistake is not hidden; the next ones are rate-limited
as any database error (the status's clock is the test's: no wall time involved)."""

import logging

import httpx
import numpy as np
from sqlalchemy import text

from scorer_svc.main import create_app
from scorer_svc.storage import checkpoints as checkpoint_store
from scorer_svc.storage import runs as run_store
from scorer_svc.storage.outages import LOG_EVERY_SECONDS
from tests.support.scorer import stored_run_config
from tests.support.serving import serving

N = 16


def test_a_database_error_of_the_scorers_own_is_logged_with_its_traceback(clocked_api, caplog):
    caplog.set_level(logging.INFO)
    state, clock, engine = clocked_api.state, clocked_api.clock, clocked_api.engine
    with state.sessions() as session:
        run = run_store.create_run(session, config=stored_run_config("run-e", N), n_no_labels=0)
        received = checkpoint_store.Received(2, 1, "lora", "0" * 64, "step-2", 100)
        checkpoint = checkpoint_store.add_checkpoint(session, run=run, received=received)
        checkpoint_store.store_scores(
            session, checkpoint=checkpoint, losses=np.linspace(1, 2, N), window=None, seconds=1
        )
    with engine.begin() as connection:  # what a query meets that names a table not there
        connection.execute(text("DROP TABLE losses"))
    app = create_app(clocked_api.settings, state)
    with serving(app) as base, httpx.Client(base_url=base, timeout=60) as client:
        caplog.clear()
        answers = [client.get("/v1/runs/run-e/weights") for _ in range(3)]
        first = [r for r in caplog.records if r.name == "scorer_svc.storage.outages"]
        clock.now += LOG_EVERY_SECONDS
        answers.append(client.get("/v1/runs/run-e/weights"))
    for answer in answers:
        assert answer.status_code == 503, answer.text[:300]
        assert answer.headers["content-type"] == "application/json"
        assert "(error)" in answer.json()["detail"]

    assert len(first) == 1, [r.getMessage() for r in first]
    assert first[0].getMessage().startswith("database error while serving GET /v1/runs/")
    assert first[0].exc_info is not None  # the traceback of the first
    assert "no such table: losses" in str(first[0].exc_info[1])
    logged = [r for r in caplog.records if r.name == "scorer_svc.storage.outages"]
    assert len(logged) == 2, [r.getMessage() for r in logged]
    assert logged[1].getMessage().startswith("database still error")
    assert "3 more error(s)" in logged[1].getMessage()
    assert logged[1].exc_info is None  # one traceback per run of errors
