"""The real scorer process: hello and LoRA checkpoints over ZeroMQ, weights over REST,
history kept across a restart."""

import json

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from common.selection import delta_weights
from common.wire.protocol import encode_checkpoint
from delta_loss_devtools.scorer_process import ScorerProcess
from tests.support.scorer import (
    all_losses,
    lora_checkpoints,
    make_hello,
    register,
    send_checkpoint,
    wait_weights,
)

pytestmark = pytest.mark.slow


def assemble_digest(tensors) -> str:
    messages = encode_checkpoint(
        run_id="run-a", step=6, update_index=3, kind="lora", tensors=tensors
    )
    return json.loads(messages[-1][0])["digest"]


def test_three_checkpoints_weights_and_restart(tiny_model, dataset_file, tmp_path):
    scorer = ScorerProcess(tmp_path / "scorer").start()
    try:
        hello = make_hello(tiny_model, dataset_file)
        reply = register(scorer.zmq_url, hello)
        assert reply["ok"] and reply["status"] == "registered", reply
        steps = [2, 4, 6]
        checkpoints = lora_checkpoints(tiny_model, 3)
        for k, (step, tensors) in enumerate(zip(steps, checkpoints, strict=True), 1):
            reply = send_checkpoint(scorer.zmq_url, "run-a", step, k, tensors)
            assert reply["ok"] and reply["status"] == "queued", reply
        # the same step again: acknowledged as a duplicate, scored once
        again = send_checkpoint(scorer.zmq_url, "run-a", 6, 3, checkpoints[2])
        assert again.get("status") == "duplicate", again
        # the same step with other content (a resumed trainer): answered before any chunk,
        # still scored once, and the stored digest is the first upload's
        other = send_checkpoint(scorer.zmq_url, "run-a", 6, 3, checkpoints[1])
        assert other["status"] == "duplicate", other
        listed = httpx.get(f"{scorer.base_url}/v1/runs/run-a/checkpoints").json()["checkpoints"]
        first_digest = assemble_digest(checkpoints[2])
        assert [c["digest"] for c in listed if c["step"] == 6] == [first_digest]

        bodies = {step: wait_weights(scorer, "run-a", step) for step in steps}
        init = all_losses(scorer.base_url, "run-a", 2)
        n = hello.n_samples
        assert bodies[2]["update_index"] == 1 and bodies[2]["window"] is None
        finite = np.isfinite(init)
        # prompt and response share cutoff_len: a long prompt keeps part of its response
        assert finite.sum() == n
        np.testing.assert_allclose(bodies[2]["weights"], finite / finite.sum())
        for k, step in ((2, 4), (3, 6)):
            window, expected = delta_weights(
                init, all_losses(scorer.base_url, "run-a", step), k, 3, 0.25
            )
            body = bodies[step]
            assert (body["t"], body["T"], body["u"]) == (window.t, window.T, window.u)
            assert body["window"] == {
                "start": window.start,
                "end": window.end,
                "truncated_at": window.truncated_at,
            }
            np.testing.assert_allclose(body["weights"], expected, rtol=1e-12)
            raw = httpx.get(
                f"{scorer.base_url}/v1/runs/run-a/weights",
                params={"step": step},
                headers={"Accept": "application/octet-stream"},
            )
            assert raw.headers["content-type"] == "application/octet-stream"
            np.testing.assert_allclose(np.frombuffer(raw.content, "<f4"), expected, rtol=1e-6)

        history = httpx.get(f"{scorer.base_url}/v1/runs/run-a/samples/3/losses").json()
        assert [p["step"] for p in history["history"]] == steps
        assert history["history"][2]["delta"] == pytest.approx(
            history["history"][0]["loss"] - history["history"][2]["loss"]
        )
        before = httpx.get(f"{scorer.base_url}/v1/runs/run-a/checkpoints").json()["checkpoints"]
        assert [c["status"] for c in before] == ["scored"] * 3
        assert all(c["samples_per_second"] > 0 for c in before)
        metrics = {
            (sample.name, tuple(sample.labels.values())): sample.value
            for family in text_string_to_metric_families(
                httpx.get(f"{scorer.base_url}/metrics").text
            )
            for sample in family.samples
        }
        assert metrics[("scorer_checkpoints", ("scored",))] == 3
        assert metrics[("scorer_queue_depth", ())] == 0
        assert metrics[("scorer_samples_scored_total", ())] == 3 * n
        # the access log has the answered requests, not the polls still pending
        log = scorer.log()
        assert 'GET /v1/runs/run-a/checkpoints HTTP/1.1" 200' in log
        assert '" 202' not in log
    finally:
        assert scorer.stop() == 0

    restarted = scorer.again().start()
    try:
        after = httpx.get(f"{restarted.base_url}/v1/runs/run-a/checkpoints").json()["checkpoints"]
        assert after == before  # same rows, same timings: nothing recomputed
        assert all_losses(restarted.base_url, "run-a", 2) == pytest.approx(init, nan_ok=True)
        reply = register(restarted.zmq_url, hello)
        assert reply["status"] == "already_registered" and reply["scored_steps"] == steps
        run = httpx.get(f"{restarted.base_url}/v1/runs/run-a").json()
        assert run["initial_step"] == 2 and run["n_samples"] == hello.n_samples
        assert run["n_invalid"] == run["n_no_labels"] == int((~finite).sum())
    finally:
        restarted.stop()
    assert "scored run run-a" not in restarted.log().split("scorer ready")[-1]
