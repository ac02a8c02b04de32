"""A run's logged metrics over REST, as MLflow serves them: posted in batches by its trainer
(with the run's own token on a scorer without one), each key's latest value, one key's history
over a step range a page at a time, a value sent again replacing the stored one. On SQLite and
PostgreSQL."""

from collections.abc import Iterator
from dataclasses import replace

import pytest
from fastapi.testclient import TestClient

from common.api.client import RUN_TOKEN_HEADER, ApiError, ScorerApi
from common.api.schemas import MetricPoint
from scorer_svc.api.state import ApiState
from scorer_svc.config import Settings
from scorer_svc.main import create_app
from scorer_svc.storage import runs as run_store
from scorer_svc.storage.db import make_engine, make_sessionmaker
from scorer_svc.storage.failures import UnrecordedFailures
from scorer_svc.storage.tables import MetricRow
from tests.support.scorer import stored_run_config

RUN_TOKEN = "ab" * 16
LOGGED = [MetricPoint(key="loss", step=s, value=3.0 - s / 10) for s in range(0, 50, 5)] + [
    MetricPoint(key="eval_loss", step=s, value=2.0 - s / 100) for s in (0, 20, 40)
] + [MetricPoint(key="selection/window_start", step=10, value=4.0)]  # fmt: skip


@pytest.fixture
def api(tmp_path, database_url) -> Iterator[ScorerApi]:
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url)
    engine = make_engine(settings.resolved_database_url)
    state = ApiState(settings, make_sessionmaker(engine), UnrecordedFailures())
    with state.sessions() as session:
        config = stored_run_config("run-m", 8, run_token=RUN_TOKEN)
        run_store.create_run(session, config=config, n_no_labels=0)
    try:
        with TestClient(create_app(settings, replace(state, instance="scorer-m"))) as http:
            yield ScorerApi("http://testserver", client=http)
    finally:
        engine.dispose()


def test_logged_metrics_are_served_latest_and_by_key(api):
    assert api.log_metrics("run-m", LOGGED, run_token=RUN_TOKEN).stored == len(LOGGED)
    latest = {m.key: (m.step, m.value) for m in api.metrics("run-m").metrics}
    assert latest == {"loss": (45, 3.0 - 4.5), "eval_loss": (40, 1.6),
                      "selection/window_start": (10, 4.0)}  # fmt: skip
    history = api.all_metric_history("run-m", "loss")
    assert [(h.step, h.value) for h in history] == [(p.step, p.value) for p in LOGGED[:10]]
    part = api.metric_history("run-m", "loss", min_step=10, max_step=20)
    assert [h.step for h in part.history] == [10, 15, 20] and part.next_page_token is None
    assert api.metric_history("run-m", "no_such_key").history == []


def test_a_history_comes_a_page_at_a_time(api):
    api.log_metrics("run-m", LOGGED, run_token=RUN_TOKEN)
    first = api.metric_history("run-m", "loss", max_results=4)
    assert [h.step for h in first.history] == [0, 5, 10, 15]
    second = api.metric_history("run-m", "loss", max_results=4, page_token=first.next_page_token)
    assert [h.step for h in second.history] == [20, 25, 30, 35]
    assert [h.step for h in api.all_metric_history("run-m", "loss", min_step=12)] == [
        15, 20, 25, 30, 35, 40, 45,
    ]  # fmt: skip


def test_a_value_sent_again_replaces_the_stored_one(api):
    api.log_metrics("run-m", LOGGED, run_token=RUN_TOKEN)
    again = [
        MetricPoint(key="loss", step=20, value=9.0),
        MetricPoint(key="loss", step=20, value=8.0),
    ]
    assert api.log_metrics("run-m", again, run_token=RUN_TOKEN).stored == 1  # the last stands
    values = {h.step: h.value for h in api.all_metric_history("run-m", "loss")}
    assert values[20] == 8.0 and len(values) == 10


def test_logging_needs_the_runs_own_token_on_a_scorer_without_one(api):
    with pytest.raises(ApiError) as refused:
        api.log_metrics("run-m", LOGGED[:1])
    assert refused.value.status == 403 and RUN_TOKEN_HEADER in refused.value.detail
    with pytest.raises(ApiError) as wrong:
        api.log_metrics("run-m", LOGGED[:1], run_token="cd" * 16)
    assert wrong.value.status == 403
    assert api.metrics("run-m").metrics == []  # nothing stored


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"metrics": [{"key": "loss", "step": 1, "value": "NaN"}]}, "value"),
        ({"metrics": [{"key": "a=b", "step": 1, "value": 1.0}]}, "key"),
        ({"metrics": [{"key": "loss", "step": -1, "value": 1.0}]}, "step"),
        ({"metrics": []}, "metrics"),
        ({"metrics": [{"key": "loss", "step": 1, "value": 1.0}] * 1001}, "metrics"),
    ],
)
def test_a_bad_batch_is_refused_naming_what_is_wrong(api, body, named):
    answer = api.http.post("/v1/runs/run-m/metrics", json=body,
                           headers={RUN_TOKEN_HEADER: RUN_TOKEN})  # fmt: skip
    assert answer.status_code == 422 and named in answer.json()["detail"], answer.text


def test_an_unknown_run_is_404_and_a_deleted_run_takes_its_metrics(api):
    with pytest.raises(ApiError) as missing:
        api.metrics("no-run")
    assert missing.value.status == 404
    api.log_metrics("run-m", LOGGED, run_token=RUN_TOKEN)
    api.delete_run("run-m", run_token=RUN_TOKEN)
    state = api.http.app.state.api
    with state.sessions() as session:
        assert session.query(MetricRow).count() == 0
