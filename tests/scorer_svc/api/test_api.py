"""The REST API in-process: a TestClient on a SQLite file seeded through the queries, no scorer
process. Weights are compared with common.selection applied to the seeded losses."""

import csv
import io
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import matplotlib.image
import numpy as np
import pyarrow.parquet
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import event, make_url

from common.selection import delta_weights, delta_window, rank_by_delta, uniform_weights
from scorer_svc.api.state import ApiState
from scorer_svc.config import Settings
from scorer_svc.main import build_service, create_app
from scorer_svc.scoring.progress import ScoringProgress
from scorer_svc.storage import checkpoints as checkpoint_store
from scorer_svc.storage import runs as run_store
from scorer_svc.storage.db import make_engine, make_sessionmaker
from scorer_svc.storage.failures import UnrecordedFailures
from scorer_svc.storage.tables import STATUSES, CheckpointRow
from tests.support import reference_queries
from tests.support.scorer import stored_run_config

N, UPDATE_TIMES, WINDOW_SIZE, RETRY_AFTER = 10, 6, 0.3, 7
NAN = float("nan")
INITIAL = np.array([2.0, 1.5, 3.0, NAN, 0.5, 2.5, 1.0, 4.0, 0.8, 1.2])
# step 4: deltas turn negative after rank 7; step 6: after rank 3, which cuts the window
DROPS = {
    4: np.array([0.5, 0.1, 1.0, NAN, -0.2, 0.3, 0.05, 2.0, -0.1, 0.4]),
    6: np.array([0.9, -0.3, 1.5, NAN, -0.4, -0.2, -0.1, 2.5, -0.5, -0.6]),
}
LOSSES = {2: INITIAL, 4: INITIAL - DROPS[4], 6: INITIAL - DROPS[6]}
SCORED = {2: 1, 4: 2, 6: 3}  # step: update index
FAILED_STEP, SCORING_STEP, RECEIVED_STEP = 8, 10, 12
FAILURE = "ValueError: no sample has a finite loss at this checkpoint"
SCORE_SECONDS = 2.0
TOKEN = "api-test-token"
RUN_TOKEN = "0123456789abcdef" * 2  # a run's own token, as a trainer's hello carries it


def seed(state: ApiState) -> None:
    """run-a: three scored checkpoints, one failed, one scoring, one received; run-empty:
    registered, nothing received."""
    config = stored_run_config("run-a", N, window_size=WINDOW_SIZE, update_times=UPDATE_TIMES)
    with state.sessions() as session:
        run = run_store.create_run(session, config=config, n_no_labels=1)
        run_store.create_run(session, config=stored_run_config("run-empty", 4), n_no_labels=0)

        def add(step: int, k: int) -> CheckpointRow:
            received = checkpoint_store.Received(
                step, k, "lora", f"{step:064d}", f"step-{step}", 100 * step
            )
            return checkpoint_store.add_checkpoint(session, run=run, received=received)

        for step, k in SCORED.items():
            window = None
            if k >= 2:
                window, _ = delta_window(INITIAL, LOSSES[step], k, UPDATE_TIMES, WINDOW_SIZE)
            checkpoint_store.store_scores(
                session, checkpoint=add(step, k), losses=LOSSES[step], window=window,
                seconds=SCORE_SECONDS,
            )  # fmt: skip
        checkpoint_store.mark_failed(session, checkpoint_id=add(FAILED_STEP, 4).id, error=FAILURE)
        checkpoint_store.mark_scoring(session, checkpoint=add(SCORING_STEP, 5))
        add(RECEIVED_STEP, 6)


@contextmanager
def seeded_state(tmp_path, **settings) -> Iterator[ApiState]:
    """The API state of a seeded database (a SQLite file in tmp_path unless settings name
    another), as a test builds it: no threads."""
    config = Settings(data_dir=tmp_path / "data", retry_after_seconds=RETRY_AFTER, **settings)
    engine = make_engine(config.resolved_database_url)
    state = ApiState(config, make_sessionmaker(engine), UnrecordedFailures())
    seed(state)
    try:
        yield state
    finally:
        engine.dispose()


@pytest.fixture
def state(tmp_path, database_url) -> Iterator[ApiState]:
    """The seeded state on each database backend."""
    with seeded_state(tmp_path, database_url=database_url) as state:
        yield state


@pytest.fixture
def client(state) -> Iterator[TestClient]:
    with TestClient(create_app(state.settings, state)) as client:
        yield client


def as_list(values: np.ndarray) -> list[float | None]:
    return [None if np.isnan(v) else float(v) for v in values]


def expected_weights(step: int) -> tuple[object, np.ndarray]:
    """(window or None, weights) by the selection rule, straight from the seeded losses."""
    k = SCORED[step]
    if k == 1:
        return None, uniform_weights(LOSSES[step])
    return delta_weights(INITIAL, LOSSES[step], k, UPDATE_TIMES, WINDOW_SIZE)


# health, runs, checkpoints


def test_healthz(client):
    response = client.get("/healthz")
    assert (response.status_code, response.json()) == (
        200,
        {"status": "ok", "ranks": 1, "ranks_alive": True, "instance": None, "detail": None},
    )


def test_healthz_fails_when_the_scoring_worker_stopped(state):
    stopped = replace(state, worker_alive=lambda: False)
    with TestClient(create_app(state.settings, stopped)) as client:
        response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["status"] == "worker stopped"
    assert "received but not scored" in response.json()["detail"]


def test_a_checkpoint_being_scored_answers_202_with_its_progress(state):
    now = [100.0]
    progress = ScoringProgress(clock=lambda: now[0])
    with state.sessions() as session:
        run = run_store.get_run(session, run_id="run-a")
        scoring = checkpoint_store.get_checkpoint(session, run=run, step=SCORING_STEP)
    progress.start(scoring.id, N, total_tokens=100)
    with TestClient(create_app(state.settings, replace(state, progress=progress))) as client:

        def pending() -> dict:
            response = client.get("/v1/runs/run-a/weights", params={"step": SCORING_STEP})
            assert response.status_code == 202
            return response.json()

        body = pending()  # nothing scored yet: no rate, no ETA
        assert body["progress"] == {"scored": 0, "total": N, "seconds": 0.0, "eta_seconds": None}
        now[0] += 8.0
        progress.advance(scoring.id, 4, 40)  # 40 of 100 tokens in 8 s: 60 left, 12 s
        body = pending()
        assert body["progress"] == {"scored": 4, "total": N, "seconds": 8.0, "eta_seconds": 12.0}
        assert (
            f"step {SCORING_STEP} is scoring: 4 of {N} samples scored, about 12s left"
            in (body["detail"])
        )
        progress.finish(scoring.id)
        assert "progress" not in pending()
        received = client.get("/v1/runs/run-a/weights", params={"step": RECEIVED_STEP}).json()
        assert received["status"] == "received" and "progress" not in received


def scrape(client) -> dict[tuple[str, tuple], float]:
    """The metrics /metrics serves, parsed as Prometheus parses them."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_metrics_report_checkpoints_by_status_and_the_queue(client):
    metrics = scrape(client)
    by_status = {s: metrics[("scorer_checkpoints", (("status", s),))] for s in STATUSES}
    assert by_status == {"received": 1, "scoring": 1, "scored": 3, "failed": 1, "superseded": 0}
    assert metrics[("scorer_queue_depth", ())] == 2
    assert metrics[("scorer_scoring_seconds_count", ())] == 0  # no worker in this process


def test_runs_are_listed_with_their_settings_and_samples_without_loss(client):
    body = client.get("/v1/runs").json()
    runs = body["runs"]
    assert [r["run_id"] for r in runs] == ["run-a", "run-empty"]
    assert body["next_page_token"] is None
    run = client.get("/v1/runs/run-a").json()
    assert run == runs[0]
    assert (run["n_samples"], run["n_no_labels"], run["n_invalid"]) == (N, 1, 1)
    assert (run["window_size"], run["update_times"], run["initial_step"]) == (
        WINDOW_SIZE, UPDATE_TIMES, 2,
    )  # fmt: skip
    stored = stored_run_config("run-a", N, window_size=WINDOW_SIZE, update_times=UPDATE_TIMES)
    assert run["config"] == {k: v for k, v in stored.items() if k != "run_token"}
    assert (run["status"], run["n_checkpoints"], run["last_step"], run["last_scored_step"]) == (
        "training", 6, RECEIVED_STEP, 6,
    )  # fmt: skip
    assert run["created_at"].endswith("Z") and run["ended_at"] is None
    empty = client.get("/v1/runs/run-empty").json()
    assert (empty["initial_step"], empty["n_invalid"]) == (None, None)
    assert (empty["status"], empty["n_checkpoints"], empty["last_step"]) == ("registered", 0, None)


def test_listed_runs_give_the_invalid_count_of_a_scan_without_reading_losses(client, state):
    """n_invalid is the n_null stored with the run's initial checkpoint when it was scored:
    what counting its NULL losses gives, with no query of the losses table."""
    initial = np.array([np.nan, 1.0, np.inf, 2.0, np.nan, -np.inf])
    with state.sessions() as session:
        nulls = run_store.create_run(
            session, config=stored_run_config("run-nulls", 6), n_no_labels=0
        )
        waiting = run_store.create_run(
            session, config=stored_run_config("run-waiting", 4), n_no_labels=0
        )
        for run in (nulls, waiting):
            received = checkpoint_store.Received(3, 1, "lora", "0" * 64, "step-3", 10)
            checkpoint_store.add_checkpoint(session, run=run, received=received)
        checkpoint_store.store_scores(
            session, checkpoint=checkpoint_store.get_checkpoint(session, run=nulls, step=3),
            losses=initial, window=None, seconds=1.0,
        )  # fmt: skip
        scans = {}
        for run_id in ("run-a", "run-nulls"):
            run = run_store.get_run(session, run_id=run_id)
            scans[run_id] = reference_queries.count_null_at(session, run=run, step=run.initial_step)
    assert scans == {"run-a": 1, "run-nulls": 4}
    engine = state.sessions.kw["bind"]
    statements: list[str] = []

    def record(_connection, _cursor, statement, *_args) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        listed = {r["run_id"]: r["n_invalid"] for r in client.get("/v1/runs").json()["runs"]}
        one = client.get("/v1/runs/run-nulls").json()["n_invalid"]
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert listed == {"run-a": 1, "run-empty": None, "run-nulls": 4, "run-waiting": None}
    assert one == scans["run-nulls"]
    assert statements and [s for s in statements if re.search(r"\blosses\b", s, re.I)] == []


def test_a_runs_training_token_is_not_served(client, state):
    config = stored_run_config("run-tok", 4) | {"run_token": "f" * 32}
    with state.sessions() as session:
        run_store.create_run(session, config=config, n_no_labels=0)
    served = client.get("/v1/runs/run-tok").json()["config"]
    assert "run_token" not in served and served["run_id"] == "run-tok"
    with state.sessions() as session:  # kept where it is checked: a resume must carry it
        assert run_store.get_run(session, run_id="run-tok").config["run_token"] == "f" * 32


def test_runs_come_a_page_at_a_time(client):
    first = client.get("/v1/runs", params={"max_results": 1}).json()
    assert [r["run_id"] for r in first["runs"]] == ["run-a"]
    token = first["next_page_token"]
    second = client.get("/v1/runs", params={"max_results": 1, "page_token": token}).json()
    assert [r["run_id"] for r in second["runs"]] == ["run-empty"]
    assert second["next_page_token"] is None
    for bad in ("x", "-1", "1e3", "٣"):
        response = client.get("/v1/runs", params={"page_token": bad})
        assert response.status_code == 422, bad
        assert response.json()["detail"].startswith("query.page_token: String should match")
    assert client.get("/v1/runs", params={"max_results": 1001}).status_code == 422


def test_a_run_ends_as_its_trainer_reports_and_a_resume_reopens_it(client, state):
    refused = client.post("/v1/runs/run-a/end", json={"status": "finished"})
    assert (refused.status_code, refused.json()["detail"]) == (
        403, "this API serves a database read-only: it changes nothing",
    )  # fmt: skip
    elsewhere = replace(state, instance="scorer-u")
    with TestClient(create_app(state.settings, elsewhere)) as client:
        with state.sessions() as session:
            run_store.get_run(session, run_id="run-a").instance = "scorer-t"
            session.commit()
        other = client.post("/v1/runs/run-a/end", json={"status": "finished"})
        assert other.status_code == 403 and "report its end there" in other.json()["detail"]
    writable = replace(state, instance="scorer-t")
    with TestClient(create_app(state.settings, writable)) as client:
        with state.sessions() as session:  # as registered by a trainer that sent its token
            run = run_store.get_run(session, run_id="run-a")
            run.config = {**run.config, "run_token": RUN_TOKEN}
            session.commit()
        without = client.post("/v1/runs/run-a/end", json={"status": "finished"})
        assert without.status_code == 403 and "X-Run-Token" in without.json()["detail"]
        client.headers["X-Run-Token"] = RUN_TOKEN  # the trainer's, as it reports the end
        _end_and_reopen(client, state)


def _end_and_reopen(client: TestClient, state: ApiState) -> None:
    ended = client.post("/v1/runs/run-a/end", json={"status": "failed", "detail": "OOM"})
    assert ended.status_code == 200, ended.text
    assert (ended.json()["status"], ended.json()["end_detail"]) == ("failed", "OOM")
    assert ended.json()["ended_at"].endswith("Z")
    finished = client.post("/v1/runs/run-a/end", json={"status": "finished"}).json()
    assert (finished["status"], finished["end_detail"]) == ("finished", None)
    assert client.get("/v1/runs/run-a").json()["status"] == "finished"
    for bad in ({"status": "done"}, {"status": "finished", "extra": 1}, {}):
        assert client.post("/v1/runs/run-a/end", json=bad).status_code == 422, bad
    assert client.post("/v1/runs/run-x/end", json={"status": "finished"}).status_code == 404
    with state.sessions() as session:
        run_store.reopen_run(session, run=run_store.get_run(session, run_id="run-a"))
    reopened = client.get("/v1/runs/run-a").json()
    assert (reopened["status"], reopened["ended_at"]) == ("training", None)


def test_unknown_run_is_404_on_every_run_route(client):
    for path in ("", "/checkpoints", "/losses", "/samples/0/losses", "/weights"):
        response = client.get(f"/v1/runs/run-x{path}")
        assert response.status_code == 404, path
        assert response.json() == {
            "detail": "no run 'run-x'; GET /v1/runs lists the runs",
            "code": "unknown_run",  # what tells it from a step never received
        }
    assert "code" not in client.get("/v1/runs/run-a/weights", params={"step": 3}).json()


def test_checkpoints_in_step_order_with_status_timings_and_error(client):
    body = client.get("/v1/runs/run-a/checkpoints").json()
    rows = body["checkpoints"]
    assert body["next_page_token"] is None
    assert [(c["step"], c["update_index"], c["status"]) for c in rows] == [
        (2, 1, "scored"), (4, 2, "scored"), (6, 3, "scored"),
        (8, 4, "failed"), (10, 5, "scoring"), (12, 6, "received"),
    ]  # fmt: skip
    for c in rows[:3]:
        assert (c["score_seconds"], c["samples_per_second"]) == (SCORE_SECONDS, N / SCORE_SECONDS)
        assert (c["n_null"], c["error"]) == (1, None)
    assert rows[3]["error"] == FAILURE and rows[3]["finished_at"] is not None
    assert rows[4]["started_at"] is not None and rows[5]["started_at"] is None
    assert [c["n_bytes"] for c in rows] == [100 * c["step"] for c in rows]
    assert all(c["received_at"].endswith("Z") for c in rows)
    assert client.get("/v1/runs/run-empty/checkpoints").json() == {
        "checkpoints": [], "next_page_token": None,
    }  # fmt: skip


def test_checkpoints_come_a_page_at_a_time(client):
    steps, token = [], None
    while True:
        params = {"max_results": 4} | ({"page_token": token} if token else {})
        body = client.get("/v1/runs/run-a/checkpoints", params=params).json()
        assert len(body["checkpoints"]) <= 4
        steps += [c["step"] for c in body["checkpoints"]]
        token = body["next_page_token"]
        if token is None:
            break
    assert steps == [2, 4, 6, 8, 10, 12]


# losses


def test_losses_page_at_a_step(client):
    first = client.get("/v1/runs/run-a/losses", params={"step": 4, "max_results": 3}).json()
    assert first == {
        "run_id": "run-a", "step": 4, "first_index": 0, "n_samples": N,
        "losses": as_list(LOSSES[4][:3]), "next_page_token": "3",
    }  # fmt: skip
    params = {"step": 4, "max_results": 4, "page_token": "3"}
    body = client.get("/v1/runs/run-a/losses", params=params).json()
    assert (body["first_index"], body["losses"]) == (3, as_list(LOSSES[4][3:7]))
    tail = client.get("/v1/runs/run-a/losses", params={"step": 2, "page_token": "8"}).json()
    assert (tail["losses"], tail["next_page_token"]) == (as_list(INITIAL[8:]), None)
    past = client.get("/v1/runs/run-a/losses", params={"step": 2, "page_token": str(N)}).json()
    assert past["losses"] == []


def test_losses_default_to_the_latest_scored_step(client):
    body = client.get("/v1/runs/run-a/losses").json()
    assert (body["step"], body["first_index"], body["next_page_token"]) == (6, 0, None)
    assert body["losses"] == as_list(LOSSES[6])


def test_losses_of_a_step_never_received_or_a_run_without_scores_are_404(client):
    response = client.get("/v1/runs/run-a/losses", params={"step": 5})
    assert response.status_code == 404
    assert response.json()["detail"] == "run run-a has no checkpoint at step 5; see /checkpoints"
    response = client.get("/v1/runs/run-empty/losses")
    assert response.status_code == 404
    assert response.json()["detail"] == "run run-empty has no scored checkpoint yet"


# the scored checkpoint both /losses and /weights name


@pytest.mark.parametrize("route", ["losses", "weights"])
def test_failed_checkpoint_is_409_with_its_error(client, route):
    response = client.get(f"/v1/runs/run-a/{route}", params={"step": FAILED_STEP})
    assert response.status_code == 409
    assert response.json()["detail"] == f"scoring step {FAILED_STEP} failed: {FAILURE}"


@pytest.mark.parametrize("route", ["losses", "weights"])
@pytest.mark.parametrize(
    ("step", "status"), [(SCORING_STEP, "scoring"), (RECEIVED_STEP, "received")]
)
def test_pending_checkpoint_is_202_with_retry_after(client, route, step, status):
    response = client.get(f"/v1/runs/run-a/{route}", params={"step": step})
    assert response.status_code == 202
    assert response.headers["Retry-After"] == str(RETRY_AFTER)
    assert response.json() == {
        "detail": f"step {step} is {status}; retry shortly",
        "status": status,
    }


@pytest.mark.parametrize("route", ["losses", "weights"])
def test_failure_the_database_could_not_store_is_409_until_forgotten(client, state, route):
    with state.sessions() as session:
        run = run_store.get_run(session, run_id="run-a")
        checkpoint = checkpoint_store.get_checkpoint(session, run=run, step=RECEIVED_STEP)
    state.failures.record(checkpoint.id, "OperationalError: database is locked")
    response = client.get(f"/v1/runs/run-a/{route}", params={"step": RECEIVED_STEP})
    assert response.status_code == 409
    assert response.json()["detail"] == (
        f"scoring step {RECEIVED_STEP} failed: OperationalError: database is locked"
    )
    state.failures.forget(checkpoint.id)  # written to the database, which says received here
    assert client.get(f"/v1/runs/run-a/{route}", params={"step": RECEIVED_STEP}).status_code == 202


# one sample's history


@pytest.mark.parametrize("index", [0, 4, N - 1])
def test_sample_history_with_delta_from_the_initial_loss(client, index):
    body = client.get(f"/v1/runs/run-a/samples/{index}/losses").json()
    assert (body["run_id"], body["sample_index"]) == ("run-a", index)
    assert body["history"] == [
        {
            "step": step,
            "update_index": k,
            "loss": LOSSES[step][index],
            "delta": pytest.approx(DROPS[step][index] if step in DROPS else 0.0),
        }
        for step, k in SCORED.items()
    ]


def test_several_histories_are_each_samples_own(client):
    one_by_one = {
        i: client.get(f"/v1/runs/run-a/samples/{i}/losses").json() for i in (0, 3, 5, N - 1)
    }
    got = client.get("/v1/runs/run-a/losses/history", params={"indices": f"{N - 1},5,0,3,5"})
    assert got.status_code == 200, got.text
    assert got.json() == {"run_id": "run-a", "samples": [one_by_one[i] for i in (0, 3, 5, N - 1)]}
    posted = client.post("/v1/runs/run-a/losses/history", json={"indices": [5, 0, 3, N - 1]})
    assert posted.json() == got.json()


@pytest.mark.parametrize(
    ("request_args", "status", "detail"),
    [
        ({"params": {"indices": f"1,{N}"}}, 404, f"sample {N} does not exist"),
        ({"params": {"indices": "1,,2"}}, 422, "query.indices: String should match pattern"),
        ({"params": {"indices": "a"}}, 422, "query.indices: String should match pattern"),
        ({"params": {"indices": "9" * 5000}}, 422, "query.indices: String should match pattern"),
        ({"params": {"indices": ",".join(map(str, range(1001)))}}, 422, "at most 1000"),
        ({"json": {"indices": []}}, 422, "body.indices: List should have at least 1 item"),
        ({"json": {"indices": [-1]}}, 422, "body.indices.0: Input should be greater than"),
        ({"json": {"index": [1]}}, 422, "body.indices: Field required"),
    ],
)
def test_bad_history_requests_say_what_was_wrong(client, request_args, status, detail):
    method = client.post if "json" in request_args else client.get
    response = method("/v1/runs/run-a/losses/history", **request_args)
    assert response.status_code == status
    assert detail in response.json()["detail"]


def test_a_runs_losses_download_as_csv_and_parquet(client):
    expected = [
        (step, k, i, LOSSES[step][i], LOSSES[2][i] - LOSSES[step][i])
        for step, k in SCORED.items()
        for i in range(N)
    ]
    response = client.get("/v1/runs/run-a/losses/download")
    assert response.headers["content-type"].startswith("text/csv")
    assert 'filename="run-a-losses.csv"' in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    got = [
        (
            int(r["step"]), int(r["update_index"]), int(r["sample_index"]),
            float(r["loss"] or "nan"), float(r["delta"] or "nan"),
        )
        for r in rows
    ]  # fmt: skip
    assert _same_rows(got, expected)
    parquet = client.get("/v1/runs/run-a/losses/download", params={"format": "parquet"})
    assert parquet.headers["content-type"] == "application/vnd.apache.parquet"
    table = pyarrow.parquet.read_table(io.BytesIO(parquet.content)).to_pydict()
    assert list(table) == ["step", "update_index", "sample_index", "loss", "delta"]
    got = [
        tuple(float("nan") if v is None else v for v in row)
        for row in zip(*table.values(), strict=True)
    ]
    assert _same_rows(got, expected)
    empty = client.get("/v1/runs/run-empty/losses/download")
    assert empty.text == "step,update_index,sample_index,loss,delta\n"
    assert client.get("/v1/runs/run-a/losses/download?format=xlsx").status_code == 422


def _same_rows(got: list[tuple], expected: list[tuple]) -> bool:
    """Equal rows, NaN equal to NaN, floats to 1e-12."""
    return len(got) == len(expected) and all(
        a[:3] == b[:3] and np.allclose(a[3:], b[3:], atol=1e-12, equal_nan=True)
        for a, b in zip(got, expected, strict=True)
    )


def test_sample_without_loss_has_null_loss_and_delta(client):
    history = client.get("/v1/runs/run-a/samples/3/losses").json()["history"]
    assert [(p["step"], p["loss"], p["delta"]) for p in history] == [
        (2, None, None), (4, None, None), (6, None, None),
    ]  # fmt: skip


def test_sample_index_past_the_run_is_404(client):
    response = client.get(f"/v1/runs/run-a/samples/{N}/losses")
    assert response.status_code == 404
    assert (
        response.json()["detail"]
        == f"sample {N} does not exist: run run-a has {N} (indices 0 to {N - 1})"
    )


# weights


@pytest.mark.parametrize("step", list(SCORED))
def test_weights_json_equal_the_selection_rule_on_the_seeded_losses(client, step):
    window, weights = expected_weights(step)
    for _ in range(2):  # built, then from the cache
        body = client.get("/v1/runs/run-a/weights", params={"step": step}).json()
        assert (body["run_id"], body["step"], body["update_index"]) == ("run-a", step, SCORED[step])
        assert (body["n_samples"], body["n_ranked"]) == (N, N - 1)
        np.testing.assert_allclose(body["weights"], weights, rtol=1e-12)
        assert body["weights"][3] == 0.0  # no loss, no weight
        if window is None:
            assert (body["t"], body["T"], body["u"], body["window"]) == (None, None, None, None)
            assert (body["delta_mean_in_window"], body["delta_mean_outside"]) == (None, None)
            continue
        assert (body["t"], body["T"], body["u"]) == (window.t, window.T, window.u)
        ranking = rank_by_delta(DROPS[step])  # the seeded losses' reductions
        inside = DROPS[step][ranking[window.start : window.end]]
        outside = np.setdiff1d(ranking, ranking[window.start : window.end])
        assert body["delta_mean_in_window"] == pytest.approx(inside.mean())
        assert body["delta_mean_outside"] == pytest.approx(DROPS[step][outside].mean())
        assert body["window"] == {
            "start": window.start, "end": window.end, "truncated_at": window.truncated_at,
        }  # fmt: skip


def test_window_of_the_seeded_steps_is_cut_where_deltas_turn_negative(client):
    windows = {s: client.get(f"/v1/runs/run-a/weights?step={s}").json()["window"] for s in (4, 6)}
    assert windows == {
        4: {"start": 0, "end": 3, "truncated_at": 7},
        6: {"start": 1, "end": 3, "truncated_at": 3},
    }


def test_weights_default_to_the_latest_scored_step(client):
    body = client.get("/v1/runs/run-a/weights").json()
    assert body["step"] == 6
    np.testing.assert_allclose(body["weights"], expected_weights(6)[1], rtol=1e-12)


@pytest.mark.parametrize("step", list(SCORED))
def test_weights_octet_stream_is_n_little_endian_float32(client, step):
    response = client.get(
        "/v1/runs/run-a/weights",
        params={"step": step},
        headers={"Accept": "application/octet-stream"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    assert (response.headers["X-Step"], response.headers["X-Update-Index"]) == (
        str(step), str(SCORED[step]),
    )  # fmt: skip
    expected = expected_weights(step)[1].astype("<f4")
    np.testing.assert_array_equal(np.frombuffer(response.content, "<f4"), expected)


# access, bad input, database failure


def test_token_is_required_on_every_route_but_healthz(tmp_path):
    with (
        seeded_state(tmp_path, token=TOKEN) as state,
        TestClient(create_app(state.settings, state)) as client,
    ):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            response = client.get("/v1/runs", headers=headers)
            assert response.status_code == 401
            assert response.headers["WWW-Authenticate"] == "Bearer"
            assert "Bearer" in response.json()["detail"]
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        for path in ("/v1/runs", "/v1/runs/run-a/weights", "/v1/runs/run-a/samples/0/losses"):
            assert client.get(path).status_code == 401, path
            assert client.get(path, headers=bearer).status_code == 200, path
        assert client.get("/healthz").status_code == 200
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers=bearer).status_code == 200
        # the documentation pages and their assets are open (they hold no data)
        for path in ("/docs", "/redoc", "/openapi.json", "/docs-assets/swagger-ui.css"):
            assert client.get(path).status_code == 200, path


def test_docs_and_redoc_load_their_assets_from_the_scorer_itself(client):
    pages = {path: client.get(path).text for path in ("/docs", "/redoc")}
    assert '"/docs-assets/swagger-ui-bundle.js"' in pages["/docs"]
    assert '"/docs-assets/swagger-ui.css"' in pages["/docs"]
    assert '"/docs-assets/redoc.standalone.js"' in pages["/redoc"]
    for page in pages.values():
        assert "cdn." not in page and "fonts.googleapis" not in page  # nothing from outside
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"):
        response = client.get(f"/docs-assets/{asset}")
        assert response.status_code == 200 and len(response.content) > 100_000, asset
    redirect = client.get("/docs/oauth2-redirect")
    assert redirect.status_code == 200 and "oauth2" in redirect.text.lower()


@pytest.mark.parametrize(
    ("path", "detail"),
    [
        ("/losses?step=-1", "query.step: Input should be greater than or equal to 0"),
        (
            "/weights?step=two",
            "query.step: Input should be a valid integer, unable to parse string as an integer",
        ),
        ("/losses?max_results=0", "query.max_results: Input should be greater than or equal to 1"),
        (
            "/losses?max_results=100001",
            "query.max_results: Input should be less than or equal to 100000",
        ),
        (
            "/losses?step=-1&max_results=x",
            "query.step: Input should be greater than or equal to 0; query.max_results: Input "
            "should be a valid integer, unable to parse string as an integer",
        ),
        ("/samples/-1/losses", "path.index: Input should be greater than or equal to 0"),
    ],
)
def test_bad_query_values_are_422_with_readable_detail(client, path, detail):
    response = client.get(f"/v1/runs/run-a{path}")
    assert response.status_code == 422
    assert response.json() == {"detail": detail}


@pytest.mark.parametrize(
    "path",
    [
        "/v1/runs/run-empty/losses?max_results=0",  # else 404: no scored checkpoint
        "/v1/runs/run-a/losses?step=5&max_results=x",  # else 404: no such step
        f"/v1/runs/run-a/losses?step={FAILED_STEP}&page_token=x",  # else 409
        f"/v1/runs/run-a/losses?step={SCORING_STEP}&max_results=0",  # else 202
    ],
)
def test_bad_page_is_422_before_the_checkpoint_is_looked_up(client, path):
    response = client.get(path)
    assert response.status_code == 422
    assert response.json()["detail"].startswith(("query.max_results: ", "query.page_token: "))


def test_run_id_too_long_is_422(client):
    response = client.get("/v1/runs/" + "r" * 129)
    assert response.status_code == 422
    assert response.json()["detail"] == "path.run_id: String should have at most 128 characters"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # a file to damage
def test_database_failure_is_503_with_retry_after(client, state):
    with state.sessions() as session:
        session.get_bind().dispose()  # new connections open the file written below
    database = Path(make_url(state.settings.resolved_database_url).database or "")
    database.write_bytes(b"this is not a SQLite database " * 200)
    paths = ("/v1/runs", "/v1/runs/run-a/weights", "/v1/runs/run-a/samples/0/losses", "/healthz")
    for path in paths:
        response = client.get(path)
        assert response.status_code == 503, path
        assert response.headers["Retry-After"] == str(RETRY_AFTER)
        assert response.json()["detail"].startswith(
            "the scorer's database is unavailable: DatabaseError"
        )


# the app that owns its threads


def service_threads() -> set[str]:
    return {t.name for t in threading.enumerate()} & {"scorer", "intake"}


def test_app_without_state_builds_and_stops_intake_and_worker(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", device="cpu", zmq_url="inproc://owned")
    assert service_threads() == set()
    with TestClient(create_app(settings)) as client:
        assert service_threads() == {"scorer", "intake"}
        assert client.get("/v1/runs").json() == {"runs": [], "next_page_token": None}
        assert client.app.state.api.settings is settings
    assert service_threads() == set()
    assert (tmp_path / "data" / "scorer.db").is_file()


def test_app_with_state_starts_no_thread(client):
    assert client.get("/v1/runs/run-a").status_code == 200
    assert service_threads() == set()


def test_api_and_worker_share_one_failures_object(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", device="cpu", zmq_url="inproc://failures")
    api, background = build_service(settings)
    background.start()
    try:
        assert background.worker.failures is api.failures
        assert background.worker.sessions is api.sessions
    finally:
        background.stop()


def test_state_with_other_settings_is_refused(state, tmp_path):
    with pytest.raises(ValueError, match="other settings"):
        create_app(Settings(data_dir=tmp_path / "other"), state)


# deltas


def test_deltas_list_the_ranking_the_window_took_page_by_page(client):
    # step 6's reductions rank 7, 2, 0, 5... (DROPS); its window took ranks [1, 3)
    ranking = rank_by_delta(DROPS[6]).tolist()
    seen, token = [], None
    while True:
        params = {"step": 6, "max_results": 4, **({"page_token": token} if token else {})}
        body = client.get("/v1/runs/run-a/deltas", params=params).json()
        assert body["window"] == {"start": 1, "end": 3, "truncated_at": 3}
        assert body["n_ranked"] == N - 1 and len(body["items"]) <= 4
        seen += body["items"]
        token = body["next_page_token"]
        if token is None:
            break
    assert [item["rank"] for item in seen] == list(range(N - 1))
    assert [item["sample_index"] for item in seen] == ranking
    for item in seen:
        i = item["sample_index"]
        assert item["delta"] == pytest.approx(DROPS[6][i])
        assert (item["loss"], item["initial_loss"]) == (LOSSES[6][i], INITIAL[i])
        assert item["in_window"] == (1 <= item["rank"] < 3)
    smallest = client.get("/v1/runs/run-a/deltas", params={"step": 6, "order": "asc"}).json()
    assert [item["sample_index"] for item in smallest["items"]] == ranking[::-1]
    assert smallest["items"][0]["rank"] == N - 2


def test_deltas_of_the_initial_checkpoint_and_bad_pages(client):
    body = client.get("/v1/runs/run-a/deltas", params={"step": 2}).json()
    assert body["window"] is None and {item["delta"] for item in body["items"]} == {0.0}
    assert not any(item["in_window"] for item in body["items"])
    bad = client.get("/v1/runs/run-a/deltas", params={"step": 6, "page_token": "x1"})
    assert bad.status_code == 422 and bad.json()["detail"].startswith("query.page_token: ")
    too_many = client.get("/v1/runs/run-a/deltas", params={"step": 6, "max_results": 10**6})
    assert too_many.status_code == 422
    pending = client.get("/v1/runs/run-a/deltas", params={"step": SCORING_STEP})
    assert pending.status_code == 202


def test_the_deltas_plot_is_a_png_of_the_checkpoint(client):
    response = client.get("/v1/runs/run-a/plots/deltas", params={"step": 6})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    image = matplotlib.image.imread(io.BytesIO(response.content), format="png")
    assert image.shape[:2] == (400, 700)  # 7 x 4 inches at 100 dpi
    assert client.get("/v1/runs/run-a/plots/deltas", params={"step": 99}).status_code == 404
