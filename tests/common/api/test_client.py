"""The typed REST client against the real app in-process (the seeded database of the API
tests): every answer is read into its model, every refusal raised as its ApiError."""

from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest
from fastapi.testclient import TestClient

from common.api import client as scorer_api
from common.api.client import (
    ApiError,
    ApiUnauthorized,
    Conflict,
    NotFound,
    NotScoredYet,
    ScorerApi,
)
from common.api.schemas import RunInfo, WeightsBody
from scorer_svc.main import create_app
from scorer_svc.storage import runs as run_store
from tests.scorer_svc.api.test_api import (
    FAILED_STEP,
    LOSSES,
    RETRY_AFTER,
    RUN_TOKEN,
    SCORED,
    SCORING_STEP,
    TOKEN,
    N,
    as_list,
    expected_weights,
    seeded_state,
)


@pytest.fixture
def api(tmp_path) -> Iterator[ScorerApi]:
    with seeded_state(tmp_path) as state:
        with state.sessions() as session:  # as registered by trainers that sent their tokens
            for run_id in ("run-a", "run-empty"):
                run = run_store.get_run(session, run_id=run_id)
                run.config = {**run.config, "run_token": RUN_TOKEN}
            session.commit()
        writable = replace(state, instance="scorer-t")
        with TestClient(create_app(state.settings, writable)) as http:
            yield ScorerApi("http://testserver", client=http)


def test_runs_and_checkpoints_are_read_into_their_models_page_by_page(api):
    runs = list(api.all_runs())
    assert all(isinstance(r, RunInfo) for r in runs)
    assert [(r.run_id, r.status, r.last_step) for r in runs] == [
        ("run-a", "training", 12), ("run-empty", "registered", None),
    ]  # fmt: skip
    assert runs[0].created_at.tzinfo is not None
    assert api.run("run-a") == runs[0]
    first = api.checkpoints("run-a", max_results=4)
    assert [c.step for c in first.checkpoints] == [2, 4, 6, 8]
    rest = api.checkpoints("run-a", max_results=4, page_token=first.next_page_token)
    assert [c.step for c in rest.checkpoints] == [10, 12] and rest.next_page_token is None
    assert [c.step for c in api.all_checkpoints("run-a")] == [2, 4, 6, 8, 10, 12]


@pytest.mark.parametrize("step", sorted(SCORED))
def test_weights_and_losses_are_the_scorers(api, step):
    body = api.weights("run-a", step=step)
    assert isinstance(body, WeightsBody)
    np.testing.assert_allclose(body.weights, expected_weights(step)[1], atol=1e-12)
    assert api.all_losses("run-a", step=step) == as_list(LOSSES[step])


def test_each_refusal_is_its_own_error_with_the_scorers_detail(api):
    with pytest.raises(NotScoredYet) as pending:
        api.weights("run-a", step=SCORING_STEP)
    assert pending.value.pending.status == "scoring"
    assert pending.value.retry_after == RETRY_AFTER
    with pytest.raises(Conflict, match=f"scoring step {FAILED_STEP} failed"):
        api.weights("run-a", step=FAILED_STEP)
    with pytest.raises(NotFound) as unknown:
        api.run("run-x")
    assert unknown.value.unknown_run and unknown.value.status == 404
    with pytest.raises(NotFound) as no_step:
        api.weights("run-a", step=5)
    assert not no_step.value.unknown_run
    with pytest.raises(ApiError) as invalid:
        api.deltas("run-a", max_results=0)
    assert invalid.value.status == 422 and "max_results" in invalid.value.detail


def test_histories_are_asked_in_the_url_or_posted(api, monkeypatch):
    wanted = [0, 5, N - 1]
    one_by_one = [api.history("run-a", i) for i in wanted]
    assert api.histories("run-a", wanted).samples == one_by_one
    monkeypatch.setattr(scorer_api, "MAX_GET_INDICES", 1)  # more than that: POSTed
    posted: list[str] = []
    api.http.event_hooks["request"].append(lambda request: posted.append(request.method))
    assert api.histories("run-a", wanted).samples == one_by_one
    assert posted == ["POST"]


def test_a_run_ends_and_downloads(api):
    with pytest.raises(ApiError) as refused:  # a scorer without a token: the run's is needed
        api.end_run("run-a", "finished", "trained 12 steps")
    assert refused.value.status == 403 and "X-Run-Token" in refused.value.detail
    ended = api.end_run("run-a", "finished", "trained 12 steps", run_token=RUN_TOKEN)
    assert (ended.status, ended.end_detail) == ("finished", "trained 12 steps")
    csv = api.download("run-a").decode()
    assert csv.splitlines()[0] == "step,update_index,sample_index,loss,delta"
    assert len(csv.splitlines()) == 1 + N * len(SCORED)
    assert api.plot_deltas("run-a").startswith(b"\x89PNG")


def test_a_run_is_deleted_with_its_own_token(api):
    with pytest.raises(ApiError) as refused:
        api.delete_run("run-empty")
    assert refused.value.status == 403 and "X-Run-Token" in refused.value.detail
    with pytest.raises(Conflict, match="queued or being scored"):  # allowed, but busy
        api.delete_run("run-a", run_token=RUN_TOKEN)
    deleted = api.delete_run("run-empty", run_token=RUN_TOKEN)
    assert (deleted.run_id, deleted.checkpoints, deleted.losses) == ("run-empty", 0, 0)
    assert [r.run_id for r in api.all_runs()] == ["run-a"]


def test_a_missing_token_is_its_own_error(tmp_path):
    with (
        seeded_state(tmp_path, token=TOKEN) as state,
        TestClient(create_app(state.settings, state)) as http,
    ):
        with pytest.raises(ApiUnauthorized, match="Bearer"):
            next(ScorerApi("http://testserver", client=http).all_runs())
        http.headers["Authorization"] = f"Bearer {TOKEN}"
        assert [r.run_id for r in ScorerApi("http://t", client=http).all_runs()] == [
            "run-a", "run-empty",
        ]  # fmt: skip


def test_runs_are_searched_through_the_client(api):
    assert [r.run_id for r in api.runs(status="registered").runs] == ["run-empty"]
    both = api.all_runs(status=["training", "registered"], order_by="created DESC")
    assert [r.run_id for r in both] == ["run-empty", "run-a"]
    assert [r.run_id for r in api.all_runs(name="EMPTY")] == ["run-empty"]
    assert list(api.all_runs(tags={"team": None})) == []
    assert list(api.all_runs(base_model="no such model")) == []
    with pytest.raises(ApiError, match="order_by"):
        api.runs(order_by="name")  # type: ignore[arg-type]


def test_histories_over_a_step_range_and_as_a_data_frame(api, monkeypatch):
    whole = api.history("run-a", 0)
    part = api.history("run-a", 0, min_step=4, max_step=6)
    assert [p.step for p in part.history] == [4, 6]
    assert part.history == [p for p in whole.history if 4 <= p.step <= 6]  # deltas kept
    assert api.history("run-a", 0, min_step=7, max_step=6).history == []
    monkeypatch.setattr(scorer_api, "MAX_GET_INDICES", 1)  # posted, with the range
    posted = api.histories("run-a", [0, 1], min_step=6)
    assert [[p.step for p in s.history] for s in posted.samples] == [
        [p.step for p in api.history("run-a", i).history if p.step >= 6] for i in (0, 1)
    ]
    pandas = pytest.importorskip("pandas")
    frame = api.histories_frame("run-a", [0, 1], min_step=4)
    assert isinstance(frame, pandas.DataFrame)
    assert list(frame.columns) == ["sample_index", "step", "update_index", "loss", "delta"]
    assert sorted(set(frame.sample_index)) == [0, 1] and frame.step.min() == 4
    row = frame[(frame.sample_index == 0) & (frame.step == 4)].iloc[0]
    point = next(p for p in whole.history if p.step == 4)
    assert (row.loss, row.delta) == (point.loss, point.delta)
