"""With a shared token set, requests without it or with a wrong one are refused, nothing stored.
Without one, a run is ended or deleted over REST only with that run's own token (the run_token
of its trainer's hello), or on a scorer started with --allow-unauthenticated-writes."""

import json

import httpx
import pytest

from common.wire.errors import Unauthorized
from delta_loss_devtools.scorer_process import ScorerProcess
from tests.support.data import make_samples
from tests.support.scorer import make_hello, register
from trainer_svc.scorer.publisher import CheckpointPublisher

pytestmark = pytest.mark.slow

TOKEN = "s3cret-token-for-tests"
RUN_TOKEN = "0123456789abcdef" * 2  # a run's own token, as its trainer's hello carries it
OTHER_RUN_TOKEN = "fedcba9876543210" * 2
FINISHED = {"status": "finished", "detail": "trained 12 steps"}


@pytest.fixture(scope="module")
def guarded(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("auth")
    (root / "token").write_text(TOKEN + "\n")
    dataset = root / "train.json"
    dataset.write_text(json.dumps(make_samples(6)))
    scorer = ScorerProcess(root / "scorer", "--token-file", str(root / "token")).start()
    yield scorer, make_hello(tiny_model, dataset, run_id="run-t")
    scorer.stop()
    assert TOKEN not in scorer.log()  # never logged


def _runs(scorer):
    headers = {"Authorization": f"Bearer {TOKEN}"}
    response = httpx.get(f"{scorer.base_url}/v1/runs", headers=headers)
    assert response.status_code == 200
    return [r["run_id"] for r in response.json()["runs"]]


@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Basic {TOKEN}", "Bearer", "bearer  x"])
def test_rest_without_the_right_token_is_401(guarded, header):
    scorer, _ = guarded
    headers = {"Authorization": header} if header else {}
    for path in ("/v1/runs", "/v1/runs/run-t/weights", "/v1/runs/x/samples/0/losses"):
        response = httpx.get(scorer.base_url + path, headers=headers)
        assert response.status_code == 401, path
        assert "Bearer" in response.json()["detail"]
    assert httpx.get(f"{scorer.base_url}/healthz").status_code == 200


def test_zmq_without_the_right_token_is_refused_and_nothing_stored(guarded):
    scorer, hello = guarded
    for token in (None, "wrong", TOKEN + "x"):
        publisher = CheckpointPublisher(scorer.zmq_url, wait_seconds=600, token=token)
        with pytest.raises(Unauthorized, match="token|handshake"):
            publisher.hello(hello)  # refused in the handshake, at once
        publisher.close()
    assert _runs(scorer) == []
    publisher = CheckpointPublisher(scorer.zmq_url, wait_seconds=120, token=TOKEN)
    assert publisher.hello(hello)["status"] == "registered"
    publisher.close()
    assert _runs(scorer) == ["run-t"]
    stored = httpx.get(
        f"{scorer.base_url}/v1/runs/run-t", headers={"Authorization": f"Bearer {TOKEN}"}
    ).json()
    assert "token" not in stored["config"]


def test_with_a_token_a_runs_own_token_does_not_stand_in_for_it(guarded):
    scorer, hello = guarded
    publisher = CheckpointPublisher(scorer.zmq_url, wait_seconds=120, token=TOKEN)
    own = hello.model_copy(update={"run_id": "run-g", "run_token": RUN_TOKEN})
    assert publisher.hello(own)["status"] == "registered"
    publisher.close()
    url = f"{scorer.base_url}/v1/runs/run-g"
    run_only = {"X-Run-Token": RUN_TOKEN}
    assert httpx.post(f"{url}/end", json=FINISHED, headers=run_only).status_code == 401
    assert httpx.delete(url, headers=run_only).status_code == 401
    assert "run-g" in _runs(scorer)
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx.post(f"{url}/end", json=FINISHED, headers=bearer).status_code == 200
    assert httpx.delete(url, headers=bearer).status_code == 200
    assert "run-g" not in _runs(scorer)


@pytest.fixture(scope="module")
def open_scorer(tiny_model, tmp_path_factory):
    """A scorer with no token (the default, on loopback), and a hello for it."""
    root = tmp_path_factory.mktemp("open")
    dataset = root / "train.json"
    dataset.write_text(json.dumps(make_samples(6)))
    scorer = ScorerProcess(root / "scorer").start()
    yield scorer, make_hello(tiny_model, dataset)
    scorer.stop()


def _registered(scorer, hello, run_id, run_token):
    """Registers a run over ZeroMQ as its trainer does: with its own token, or none (a trainer
    from before run tokens)."""
    reply = register(
        scorer.zmq_url, hello.model_copy(update={"run_id": run_id, "run_token": run_token})
    )
    assert reply["status"] == "registered", reply
    return f"{scorer.base_url}/v1/runs/{run_id}"


def _status(url):
    response = httpx.get(url)
    return response.json()["status"] if response.status_code == 200 else response.status_code


def test_without_a_token_a_run_is_not_deleted_or_ended_without_its_own(open_scorer):
    scorer, hello = open_scorer
    url = _registered(scorer, hello, "run-kept", RUN_TOKEN)
    for headers in ({}, {"X-Run-Token": OTHER_RUN_TOKEN}, {"X-Run-Token": ""}):
        refused = httpx.delete(url, headers=headers)
        assert refused.status_code == 403, (headers, refused.text)
        detail = refused.json()["detail"]
        for way in ("X-Run-Token", "Authorization: Bearer", "--allow-unauthenticated-writes"):
            assert way in detail, detail
        ended = httpx.post(f"{url}/end", json=FINISHED, headers=headers)
        assert ended.status_code == 403 and "X-Run-Token" in ended.json()["detail"]
    assert _status(url) == "registered"  # still there, and not ended


def test_without_a_token_the_runs_own_token_ends_and_deletes_it(open_scorer):
    scorer, hello = open_scorer
    url = _registered(scorer, hello, "run-own", RUN_TOKEN)
    other = _registered(scorer, hello, "run-other", OTHER_RUN_TOKEN)
    ended = httpx.post(f"{url}/end", json=FINISHED, headers={"X-Run-Token": RUN_TOKEN})
    assert ended.status_code == 200, ended.text
    assert (ended.json()["status"], ended.json()["end_detail"]) == ("finished", "trained 12 steps")
    # one run's token is no other's
    assert httpx.delete(other, headers={"X-Run-Token": RUN_TOKEN}).status_code == 403
    deleted = httpx.delete(url, headers={"X-Run-Token": RUN_TOKEN})
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["run_id"] == "run-own"
    assert (_status(url), _status(other)) == (404, "registered")


def test_a_run_registered_without_a_token_says_what_to_do(open_scorer):
    scorer, hello = open_scorer
    url = _registered(scorer, hello, "run-untokened", None)
    for refused in (httpx.delete(url), httpx.post(f"{url}/end", json=FINISHED),
                    httpx.delete(url, headers={"X-Run-Token": RUN_TOKEN})):  # fmt: skip
        assert refused.status_code == 403
        detail = refused.json()["detail"]
        assert "has no run token of its own" in detail, detail
        assert "SCORER_TOKEN" in detail and "--allow-unauthenticated-writes" in detail
    assert _status(url) == "registered"


def test_a_scorer_started_to_allow_it_deletes_and_ends_without_a_token(tiny_model, tmp_path):
    dataset = tmp_path / "train.json"
    dataset.write_text(json.dumps(make_samples(6)))
    hello = make_hello(tiny_model, dataset)
    with ScorerProcess(tmp_path / "scorer", "--allow-unauthenticated-writes") as scorer:
        untokened = _registered(scorer, hello, "run-untokened", None)
        tokened = _registered(scorer, hello, "run-tokened", RUN_TOKEN)
        for url in (untokened, tokened):
            ended = httpx.post(f"{url}/end", json=FINISHED)
            assert ended.status_code == 200 and ended.json()["status"] == "finished"
            assert httpx.delete(url).status_code == 200
            assert _status(url) == 404
