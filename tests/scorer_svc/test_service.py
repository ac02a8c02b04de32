"""The real scorer process: hello and LoRA checkpoints over ZeroMQ, weights over REST,
history kept across a restart."""

import time

import httpx
import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from common.datasets import load_alpaca
from common.hello import build_hello
from common.model_spec import LoraSettings, ModelSpec, checkpoint_tensors
from common.protocol import Hello, encode_checkpoint, encode_hello
from common.selection import delta_weights
from common.tokenization import TokenizationSettings, encode_dataset
from tests.conftest import ScorerProcess, zmq_request

pytestmark = pytest.mark.slow

LORA = LoraSettings(r=4, alpha=8, dropout=0.0, target_modules="all-linear")
SETTINGS = TokenizationSettings(template="auto", cutoff_len=256)


def make_hello(tiny_model, dataset_file, run_id="run-a", **over):
    """A LoRA run's hello as the trainer builds it, with fields in over replaced."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    hello = build_hello(
        run_id=run_id,
        spec=ModelSpec(str(tiny_model), "lora", LORA),
        dataset=str(dataset_file),
        dataset_dir=None,
        tokenization=SETTINGS,
        encoded=encode_dataset(tokenizer, load_alpaca(dataset_file), SETTINGS),
        window_size=0.25,
        update_times=3,
        vocab_size=len(tokenizer),
    )
    return Hello.model_validate({**hello.model_dump(), **over})


def lora_checkpoints(tiny_model, n):
    """Trainable tensors of a peft model after n rounds of random drift (stand-in training)."""
    model = ModelSpec(str(tiny_model), "lora", LORA).build()
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        with torch.no_grad():
            for p in checkpoint_tensors(model, "lora").values():
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
        out.append({k: t.clone() for k, t in checkpoint_tensors(model, "lora").items()})
    return out


def send_checkpoint(url, run_id, step, update_index, tensors):
    frames = encode_checkpoint(
        run_id=run_id, step=step, update_index=update_index, kind="lora", tensors=tensors
    )
    return zmq_request(url, frames)


def wait_weights(base_url, run_id, step, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = httpx.get(f"{base_url}/v1/runs/{run_id}/weights", params={"step": step})
        if r.status_code == 200:
            return r.json()
        assert r.status_code == 202, r.text
        assert "Retry-After" in r.headers
        time.sleep(0.2)
    raise AssertionError(f"weights for step {step} not ready in {timeout}s")


def all_losses(base_url, run_id, step):
    r = httpx.get(f"{base_url}/v1/runs/{run_id}/losses", params={"step": step, "limit": 100000})
    assert r.status_code == 200, r.text
    return [np.nan if v is None else v for v in r.json()["losses"]]


def test_three_checkpoints_weights_and_restart(tiny_model, dataset_file, tmp_path):
    scorer = ScorerProcess(tmp_path / "scorer").start()
    try:
        hello = make_hello(tiny_model, dataset_file)
        reply = zmq_request(scorer.zmq_url, encode_hello(hello))
        assert reply["ok"] and reply["status"] == "registered", reply
        steps = [2, 4, 6]
        checkpoints = lora_checkpoints(tiny_model, 3)
        for k, (step, tensors) in enumerate(zip(steps, checkpoints, strict=True), 1):
            reply = send_checkpoint(scorer.zmq_url, "run-a", step, k, tensors)
            assert reply["ok"] and reply["status"] == "queued", reply
        # the same step again: acknowledged as a duplicate, scored once
        again = send_checkpoint(scorer.zmq_url, "run-a", 6, 3, checkpoints[2])
        assert again.get("status") == "duplicate", again
        # the same step with other content (a resumed trainer): still scored once
        other = send_checkpoint(scorer.zmq_url, "run-a", 6, 3, checkpoints[1])
        assert (other["status"], other["same_content"]) == ("duplicate", False)

        bodies = {step: wait_weights(scorer.base_url, "run-a", step) for step in steps}
        init = all_losses(scorer.base_url, "run-a", 2)
        n = hello.n_samples
        assert bodies[2]["update_index"] == 1 and bodies[2]["window"] is None
        finite = np.isfinite(init)
        assert 0 < finite.sum() < n  # long prompts cut at cutoff_len have no loss
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
        before = httpx.get(f"{scorer.base_url}/v1/runs/run-a/checkpoints").json()
        assert [c["status"] for c in before] == ["scored"] * 3
        assert all(c["samples_per_second"] > 0 for c in before)
    finally:
        assert scorer.stop() == 0

    restarted = ScorerProcess(tmp_path / "scorer")
    restarted.zmq_url, restarted.http_port = scorer.zmq_url, scorer.http_port
    restarted.base_url = scorer.base_url
    restarted.start()
    try:
        after = httpx.get(f"{restarted.base_url}/v1/runs/run-a/checkpoints").json()
        assert after == before  # same rows, same timings: nothing recomputed
        assert all_losses(restarted.base_url, "run-a", 2) == pytest.approx(init, nan_ok=True)
        reply = zmq_request(restarted.zmq_url, encode_hello(hello))
        assert reply["status"] == "already_registered" and reply["scored_steps"] == steps
        run = httpx.get(f"{restarted.base_url}/v1/runs/run-a").json()
        assert run["initial_step"] == 2 and run["n_samples"] == hello.n_samples
        assert run["n_invalid"] == run["n_no_labels"] == int((~finite).sum())
    finally:
        restarted.stop()
    assert "scored run run-a" not in restarted.log().split("scorer ready")[-1]
