"""With a shared token set, requests without it or with a wrong one are refused, nothing stored."""

import json

import httpx
import pytest

from common.errors import Unauthorized
from devtools.scorer_process import ScorerProcess
from tests.support.data import make_samples
from tests.support.scorer import make_hello
from trainer_svc.publisher import CheckpointPublisher

pytestmark = pytest.mark.slow

TOKEN = "s3cret-token-for-tests"


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
