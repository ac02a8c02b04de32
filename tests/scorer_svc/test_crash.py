"""The real scorer stopped mid-scoring, by SIGTERM or SIGKILL: on restart the acknowledged
checkpoint is scored from the tensors persisted before the ack, and nothing is half-stored."""

import json
import signal
import sqlite3
import time

import httpx
import pytest

from common.protocol import encode_checkpoint, encode_hello
from tests.conftest import ScorerProcess, make_samples, zmq_request
from tests.scorer_svc.test_service import all_losses, lora_checkpoints, make_hello, wait_weights

pytestmark = pytest.mark.slow

# Enough work, scored one sample at a time, that a signal lands while scoring.
N_SAMPLES = 400
SLOW = ("--batch-size", "1")


def _status(db, step):
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT status FROM checkpoints WHERE step = ?", (step,)).fetchone()
        (n_losses,) = conn.execute("SELECT count(*) FROM losses WHERE step = ?", (step,)).fetchone()
    return (row[0] if row else None), n_losses


def _wait_status(db, step, wanted, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, _ = _status(db, step)
        if status == wanted:
            return
        time.sleep(0.02)
    raise AssertionError(f"step {step} never reached {wanted}")


@pytest.fixture
def run_files(tiny_model, tmp_path):
    dataset = tmp_path / "train.json"
    dataset.write_text(json.dumps(make_samples(N_SAMPLES, seed=3)))
    hello = make_hello(tiny_model, dataset, run_id="run-c")
    return hello, lora_checkpoints(tiny_model, 2)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_stopped_while_scoring_then_restarted(run_files, tmp_path, sig):
    hello, (first, second) = run_files
    scorer = ScorerProcess(tmp_path / "scorer", *SLOW).start()
    db = tmp_path / "scorer" / "scorer.db"
    zmq_request(scorer.zmq_url, encode_hello(hello))
    for step, k, tensors in ((2, 1, first), (4, 2, second)):
        frames = encode_checkpoint(
            run_id="run-c", step=step, update_index=k, kind="lora", tensors=tensors
        )
        assert zmq_request(scorer.zmq_url, frames)["status"] == "queued"
    _wait_status(db, 2, "scoring")
    code = scorer.stop(sig)
    assert code == (0 if sig == signal.SIGTERM else -signal.SIGKILL)
    status, n_losses = _status(db, 2)
    assert n_losses == 0  # nothing half-stored
    assert status == ("received" if sig == signal.SIGTERM else "scoring")
    assert _status(db, 4) == ("received", 0)

    restarted = ScorerProcess(tmp_path / "scorer")
    restarted.zmq_url, restarted.http_port = scorer.zmq_url, scorer.http_port
    restarted.base_url = scorer.base_url
    restarted.start()
    try:
        body = wait_weights(restarted.base_url, "run-c", 4, timeout=300)
        assert body["update_index"] == 2
        assert len(all_losses(restarted.base_url, "run-c", 2)) == N_SAMPLES
        checkpoints = httpx.get(f"{restarted.base_url}/v1/runs/run-c/checkpoints").json()
        assert [c["status"] for c in checkpoints] == ["scored", "scored"]
    finally:
        restarted.stop()
