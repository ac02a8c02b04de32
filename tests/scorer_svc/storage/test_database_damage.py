"""A SQLite file damaged under a running scorer: every route that reads the database answers
503 with a JSON detail saying what to do (no 500, no plain text), /healthz included, and the
log says so once (then at most once a minute, on the status's clock, which the test moves),
not a traceback per request."""

import logging
import re
import sqlite3
from pathlib import Path

import httpx
import numpy as np

from common.selection import delta_window
from scorer_svc.api.state import ApiState
from scorer_svc.main import create_app
from scorer_svc.storage import checkpoints as checkpoint_store
from scorer_svc.storage import runs as run_store
from scorer_svc.storage.outages import LOG_EVERY_SECONDS
from tests.support.scorer import stored_run_config
from tests.support.serving import serving

N, STEPS, UPDATE_TIMES = 4000, 6, 6
PAGE = 4096
OUTAGES = "scorer_svc.storage.outages"  # the logger of the DatabaseStatus


def seed(state: ApiState) -> None:
    """run-d: STEPS scored checkpoints of N losses each (the losses fill most of the file)."""
    rng = np.random.default_rng(0)
    config = stored_run_config("run-d", N, window_size=0.5, update_times=UPDATE_TIMES)
    with state.sessions() as session:
        run = run_store.create_run(session, config=config, n_no_labels=0)
        initial = rng.uniform(1, 3, N)
        for k in range(1, STEPS + 1):
            received = checkpoint_store.Received(2 * k, k, "lora", f"{k:064d}", f"step-{k}", 100)
            checkpoint = checkpoint_store.add_checkpoint(session, run=run, received=received)
            losses = initial if k == 1 else initial - rng.uniform(-0.5, 1, N)
            window = None if k == 1 else delta_window(initial, losses, k, UPDATE_TIMES, 0.5)[0]
            checkpoint_store.store_scores(
                session, checkpoint=checkpoint, losses=losses, window=window, seconds=1.0
            )


def damage(path: Path) -> None:
    """Everything in the file (the WAL written back into it first) from a quarter of it to
    its last page written over with garbage: the pages of the losses and of their index."""
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    pages = path.stat().st_size // PAGE
    with path.open("r+b") as f:
        for page in range(pages // 4, pages - 1):
            f.seek(page * PAGE)
            f.write(bytes(range(256)) * (PAGE // 256))
        f.flush()


def get_paths(app) -> list[str]:
    """Every GET route of the OpenAPI schema, its parameters filled in."""
    paths = []
    for template, operations in app.openapi()["paths"].items():
        if "get" not in operations:
            continue
        path = template.replace("{run_id}", "run-d").replace("{index}", "0")
        required = [
            p["name"]
            for p in operations["get"].get("parameters", [])
            if p["in"] == "query" and p.get("required")
        ]
        if required:
            path += "?" + "&".join(f"{name}=0" for name in required)
        paths.append(path)
    return paths


# /metrics answers 200 with scorer_database_up 0: a scrape keeps the worker's figures
NOT_READING = {"/metrics"}


def test_a_damaged_database_answers_503_json_on_every_route(clocked_api, caplog):
    caplog.set_level(logging.INFO)
    state, clock, engine = clocked_api.state, clocked_api.clock, clocked_api.engine
    seed(state)
    app = create_app(clocked_api.settings, state)
    with serving(app) as base, httpx.Client(base_url=base, timeout=60) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/v1/runs/run-d/checkpoints").status_code == 200
        engine.dispose()  # no connection keeps pages it read before in its cache
        damage(clocked_api.database_file)
        caplog.clear()

        first = client.get("/v1/runs/run-d/weights")  # reads the damaged losses
        assert first.status_code == 503, first.text[:300]
        paths = get_paths(app)
        assert "/healthz" in paths and "/v1/runs/run-d/plots/trajectories" in paths
        answers = {}
        for _ in range(3):  # again and again: the log does not grow with them
            for path in paths:
                answers[path] = client.get(path)
        at_first = [r.getMessage() for r in caplog.records if r.name == OUTAGES]
        clock.now += LOG_EVERY_SECONDS  # a minute on: one line more, with a count
        a_minute_on = client.get("/v1/runs/run-d/weights")
    for path, response in answers.items():
        if path in NOT_READING:
            continue
        assert response.status_code == 503, (path, response.status_code, response.text[:300])
        assert response.headers["content-type"] == "application/json", path
        assert response.headers["Retry-After"] == str(clocked_api.settings.retry_after_seconds), (
            path
        )
        detail = response.json()["detail"]
        assert "damaged" in detail and "restore the file from a backup" in detail, (path, detail)
    assert answers["/metrics"].status_code == 200
    assert "scorer_database_up" in answers["/metrics"].text

    assert a_minute_on.status_code == 503 and "damaged" in a_minute_on.json()["detail"]

    assert [r.getMessage() for r in caplog.records if r.exc_info is not None] == []
    assert len(at_first) == 1, at_first  # the first at once; the next after a minute
    assert re.match(r"database damaged while serving GET /v1/runs/run-d/weights", at_first[0])
    assert "restore the file from a backup" in at_first[0]
    database = [r.getMessage() for r in caplog.records if r.name == OUTAGES]
    assert len(database) == 2, database
    assert database[1].startswith("database still damaged"), database[1]
    assert re.search(r"\d+ more error\(s\) or refusal\(s\)", database[1]), database[1]
