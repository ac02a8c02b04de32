"""Every route of the live scorer's OpenAPI schema, with hypothesis-drawn path and query
values (and bodies and run tokens for the others than GET): never a 5xx, every error is JSON
with a readable detail, and, the scorer having no token, no request without the run's own
token ends or deletes the run."""

import json
import re
import string
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.wire.protocol import encode_checkpoint
from delta_loss_devtools.scorer_process import ScorerProcess
from tests.support.data import make_samples
from tests.support.scorer import lora_checkpoints, make_hello, register, wait_weights, zmq_upload

pytestmark = pytest.mark.slow

VALUES = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.sampled_from(["0", "1", "2", "-1", "run-z", "", "nan", "1e309", "%00", "..", "0x10"]),
    st.text(max_size=40),
)
# what a request that changes a run carries: bodies valid and not, a run token of the right
# shape but not the run's, junk
BODIES = st.one_of(
    st.sampled_from([{"status": "finished"}, {"status": "failed", "detail": "x"}, {}, None]),
    st.fixed_dictionaries({"indices": st.lists(st.integers(-2, 10), max_size=5)}),
)
RUN_TOKENS = st.one_of(
    st.none(),
    st.just("0" * 32),
    st.text(alphabet=string.ascii_letters + string.digits + "-_", max_size=40),
)


@pytest.fixture(scope="module")
def live(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("rest-fuzz")
    dataset = root / "train.json"
    dataset.write_text(json.dumps(make_samples(8)))
    scorer = ScorerProcess(root / "scorer").start()
    hello = make_hello(tiny_model, dataset, run_id="run-z")
    register(scorer.zmq_url, hello)
    frames = encode_checkpoint(
        run_id="run-z", step=2, update_index=1, kind="lora",
        tensors=lora_checkpoints(tiny_model, 1)[0],
    )  # fmt: skip
    zmq_upload(scorer.zmq_url, frames)
    wait_weights(scorer, "run-z", 2)
    schema = httpx.get(f"{scorer.base_url}/openapi.json").json()
    routes = []
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            query = [p["name"] for p in operation.get("parameters", []) if p["in"] == "query"]
            routes.append((method, path, query))
    yield scorer, routes
    scorer.stop()


def test_schema_lists_every_route(live):
    operations = {(method, path) for method, path, _ in live[1]}
    assert {
        ("get", "/healthz"), ("get", "/v1/runs/{run_id}/weights"),
        ("get", "/v1/runs/{run_id}/losses"), ("post", "/v1/runs/{run_id}/end"),
        ("delete", "/v1/runs/{run_id}"),
    } <= operations  # fmt: skip


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_no_input_gets_a_server_error(live, data):
    scorer, routes = live
    method, path, query = data.draw(st.sampled_from(routes))
    # the routes that change a run are aimed at the real one most of the time
    names = VALUES if method == "get" else st.one_of(st.just("run-z"), VALUES)
    filled = re.sub(r"\{[^}]+\}", lambda _: quote(data.draw(names), safe="") or "x", path)
    params = {name: data.draw(VALUES) for name in query if data.draw(st.booleans())}
    accept = data.draw(st.sampled_from(["application/json", "application/octet-stream", "*/*"]))
    headers, body = {"Accept": accept}, None
    if method != "get":
        body = data.draw(BODIES)
        run_token = data.draw(RUN_TOKENS)
        if run_token is not None:
            headers["X-Run-Token"] = run_token
    response = httpx.request(
        method, scorer.base_url + filled, params=params, headers=headers, json=body
    )
    what = (method, filled, params, body, response.text)
    assert response.status_code < 500, what
    if response.status_code >= 400:
        detail = response.json()["detail"]
        assert isinstance(detail, str) and detail, what
    if method != "get":  # the run's token is the trainer's alone: the run stays as it was
        run = httpx.get(f"{scorer.base_url}/v1/runs/run-z")
        assert run.status_code == 200 and run.json()["status"] == "training", what
