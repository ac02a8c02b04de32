"""Every GET route of the live scorer's OpenAPI schema, with hypothesis-drawn path and query
values: never a 5xx, and every error is JSON with a readable detail."""

import json
import re
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.protocol import encode_checkpoint
from devtools.scorer_process import ScorerProcess
from tests.support.data import make_samples
from tests.support.scorer import lora_checkpoints, make_hello, register, wait_weights, zmq_upload

pytestmark = pytest.mark.slow

VALUES = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.sampled_from(["0", "1", "2", "-1", "run-z", "", "nan", "1e309", "%00", "..", "0x10"]),
    st.text(max_size=40),
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
        if "get" in item:
            query = [p["name"] for p in item["get"].get("parameters", []) if p["in"] == "query"]
            routes.append((path, query))
    yield scorer, routes
    scorer.stop()


def test_schema_lists_every_route(live):
    paths = {path for path, _ in live[1]}
    assert {"/healthz", "/v1/runs/{run_id}/weights", "/v1/runs/{run_id}/losses"} <= paths


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_no_input_gets_a_server_error(live, data):
    scorer, routes = live
    path, query = data.draw(st.sampled_from(routes))
    filled = re.sub(r"\{[^}]+\}", lambda _: quote(data.draw(VALUES), safe="") or "x", path)
    params = {name: data.draw(VALUES) for name in query if data.draw(st.booleans())}
    accept = data.draw(st.sampled_from(["application/json", "application/octet-stream", "*/*"]))
    response = httpx.get(scorer.base_url + filled, params=params, headers={"Accept": accept})
    assert response.status_code < 500, (filled, params, response.text)
    if response.status_code >= 400:
        detail = response.json()["detail"]
        assert isinstance(detail, str) and detail, (filled, params, response.text)
