"""GET /v1/runs as MLflow users search runs: by status, name, tag and base model, ordered by
registration or by the latest step, a page at a time; and unknown query parameters refused on
every route. On SQLite and PostgreSQL."""

from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from scorer_svc.api.state import ApiState
from scorer_svc.config import Settings
from scorer_svc.main import create_app
from scorer_svc.storage import checkpoints as checkpoint_store
from scorer_svc.storage import runs as run_store
from scorer_svc.storage.db import make_engine, make_sessionmaker
from scorer_svc.storage.failures import UnrecordedFailures
from scorer_svc.storage.tables import RunTag
from tests.support.scorer import stored_run_config

N = 8
QWEN, LLAMA = "/models/Qwen2.5-7B", "/models/Llama-3.1-8B"
# run id: (run_name, tags, base model, checkpoint steps, how it ended)
RUNS = {
    "qwen-a": ("Qwen alpaca 20%", {"team": "nlp", "gpu": "h100"}, QWEN, [2, 4], None),
    "qwen-b": ("Qwen alpaca 10%", {"team": "nlp"}, QWEN, [2, 4, 6, 8], "finished"),
    "llama-c": ("Llama 50%_off", {"team": "vision"}, LLAMA, [2], "failed"),
    "llama-d": (None, {}, LLAMA, [], None),
}  # fmt: skip


def seed(state: ApiState) -> None:
    with state.sessions() as session:
        for run_id, (name, tags, base, steps, ending) in RUNS.items():
            config = stored_run_config(run_id, N) | {
                "run_name": name, "tags": tags, "base_model": base,
            }  # fmt: skip
            run = run_store.create_run(session, config=config, n_no_labels=0)
            for k, step in enumerate(steps, start=1):
                received = checkpoint_store.Received(step, k, "lora", f"{step:064d}", "p", 10)
                checkpoint = checkpoint_store.add_checkpoint(session, run=run, received=received)
                checkpoint_store.store_scores(
                    session, checkpoint=checkpoint, losses=np.ones(N), window=None, seconds=1
                )
            if ending is not None:
                run_store.end_run(session, run=run, status=ending, detail=None)


@pytest.fixture
def client(tmp_path, database_url) -> Iterator[TestClient]:
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url)
    engine = make_engine(settings.resolved_database_url)
    state = ApiState(settings, make_sessionmaker(engine), UnrecordedFailures())
    seed(state)
    try:
        with TestClient(create_app(settings, state)) as client:
            yield client
    finally:
        engine.dispose()


def found(client: TestClient, **params) -> list[str]:
    answer = client.get("/v1/runs", params=params)
    assert answer.status_code == 200, answer.text
    return [run["run_id"] for run in answer.json()["runs"]]


def test_every_run_in_the_order_they_registered_with_name_and_tags(client):
    runs = client.get("/v1/runs").json()["runs"]
    assert [r["run_id"] for r in runs] == list(RUNS)
    assert runs[0]["run_name"] == "Qwen alpaca 20%"
    assert runs[0]["tags"] == {"gpu": "h100", "team": "nlp"}
    assert (runs[3]["run_name"], runs[3]["tags"]) == (None, {})
    assert client.get("/v1/runs/qwen-b").json()["tags"] == {"team": "nlp"}


def test_runs_by_status(client):
    assert found(client, status="training") == ["qwen-a"]
    assert found(client, status="finished") == ["qwen-b"]
    assert found(client, status="failed") == ["llama-c"]
    assert found(client, status="registered") == ["llama-d"]
    assert found(client, status=["failed", "registered"]) == ["llama-c", "llama-d"]


def test_runs_by_name_within_run_name_or_run_id_in_any_case(client):
    assert found(client, name="alpaca") == ["qwen-a", "qwen-b"]
    assert found(client, name="LLAMA-D") == ["llama-d"]  # its id: it has no name
    assert found(client, name="10%") == ["qwen-b"]  # % is a character, not a wildcard
    assert found(client, name="50%_off") == ["llama-c"]
    assert found(client, name="a_1") == []  # nor is _


def test_runs_by_tags_and_base_model(client):
    assert found(client, tag="team=nlp") == ["qwen-a", "qwen-b"]
    assert found(client, tag=["team=nlp", "gpu=h100"]) == ["qwen-a"]  # all must hold
    assert found(client, tag="gpu") == ["qwen-a"]  # the key alone
    assert found(client, tag="team=NLP") == []  # a value is matched exactly
    assert found(client, base_model="llama-3.1") == ["llama-c", "llama-d"]
    assert found(client, base_model="qwen", status="finished", tag="team=nlp") == ["qwen-b"]


def test_runs_in_the_order_asked_for(client):
    assert found(client, order_by="created DESC") == list(RUNS)[::-1]
    # by the latest step (none yet: -1), ties by registration
    assert found(client, order_by="last_step DESC") == ["qwen-b", "qwen-a", "llama-c", "llama-d"]
    assert found(client, order_by="last_step") == ["llama-d", "llama-c", "qwen-a", "qwen-b"]


@pytest.mark.parametrize("order_by", ["created", "created DESC", "last_step", "last_step DESC"])
def test_pages_follow_the_order_and_filters_without_gaps(client, order_by):
    whole = found(client, order_by=order_by, max_results=100)
    pages, token = [], None
    while True:
        params = {"order_by": order_by, "max_results": 1} | ({"page_token": token} if token else {})
        body = client.get("/v1/runs", params=params).json()
        pages += [run["run_id"] for run in body["runs"]]
        token = body["next_page_token"]
        if token is None:
            break
    assert pages == whole and len(pages) == len(RUNS)
    first = client.get("/v1/runs", params={"tag": "team=nlp", "max_results": 1}).json()
    rest = found(client, tag="team=nlp", page_token=first["next_page_token"])
    assert [r["run_id"] for r in first["runs"]] + rest == ["qwen-a", "qwen-b"]


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"status": "done"}, "status"),
        ({"order_by": "name"}, "order_by"),
        ({"page_token": "12"}, "page_token"),
        ({"tag": "a=b=c=d", "max_results": 0}, "max_results"),
        ({"tag": "bad key!"}, "tag"),
        ({"tag": [f"k{i}" for i in range(17)]}, "tag"),  # each filter is one more EXISTS
        ({"page_token": "9999999999999999999:1"}, "page_token"),  # beyond the steps stored
    ],
)
def test_a_bad_search_is_refused_naming_the_parameter(client, params, named):
    answer = client.get("/v1/runs", params=params)
    assert answer.status_code == 422 and named in answer.json()["detail"], answer.text


@pytest.mark.parametrize(
    "path",
    ["/v1/runs?stats=failed", "/v1/runs/qwen-a?verbose=1", "/v1/runs/qwen-a/weights?stepp=4",
     "/healthz?x=1"],
)  # fmt: skip
def test_an_unknown_query_parameter_is_refused_by_name(client, path):
    answer = client.get(path)
    assert answer.status_code == 422, answer.text
    unknown = path.split("?")[1].split("=")[0]
    assert f"query.{unknown}: unknown query parameter" in answer.json()["detail"]
    assert "it takes" in answer.json()["detail"]


def test_the_search_named_in_the_check_is_what_the_route_reads(client):
    detail = client.get("/v1/runs?stats=failed").json()["detail"]
    for name in ("status", "name", "tag", "base_model", "order_by", "max_results", "page_token"):
        assert name in detail


def test_a_resume_may_rename_and_retag_and_a_deletion_takes_the_tags(client):
    state = client.app.state.api
    with state.sessions() as session:
        run = run_store.get_run(session, run_id="qwen-a")
        run_store.reopen_run(session, run=run, settings={"run_name": "renamed", "tags": {"x": "1"}})
    body = client.get("/v1/runs/qwen-a").json()
    assert (body["run_name"], body["tags"]) == ("renamed", {"x": "1"})
    assert found(client, tag="team=nlp") == ["qwen-b"]
    with state.sessions() as session:
        run = run_store.get_run(session, run_id="qwen-a")
        assert run_store.delete_run(session, run=run) is not None
        assert session.query(RunTag).filter(RunTag.run_pk == run.id).count() == 0


def test_a_page_token_past_every_run_gives_an_empty_page(client):
    assert found(client, page_token="5:999999999999999999") == []
    assert found(client, page_token="999999999999999999:1") == []
    assert found(client, page_token="-1:1", order_by="last_step DESC") == []
