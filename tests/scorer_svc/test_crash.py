"""The real scorer stopped mid-scoring, by SIGTERM or SIGKILL: on restart the acknowledged
checkpoint is scored from the tensors persisted before the ack, and nothing is half-stored."""

import json
import signal

import httpx
import pytest

from common.wire.protocol import encode_checkpoint
from delta_loss_devtools.scorer_process import ScorerProcess
from tests.support.data import make_samples
from tests.support.scorer import (
    all_losses,
    db_status,
    lora_checkpoints,
    make_hello,
    register,
    wait_status,
    wait_weights,
    zmq_upload,
)

pytestmark = pytest.mark.slow

# Enough work, scored one sample at a time, that a signal lands while scoring.
N_SAMPLES = 400
SLOW = ("--batch-size", "1")


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
    try:
        register(scorer.zmq_url, hello)
        for step, k, tensors in ((2, 1, first), (4, 2, second)):
            frames = encode_checkpoint(
                run_id="run-c", step=step, update_index=k, kind="lora", tensors=tensors
            )
            assert zmq_upload(scorer.zmq_url, frames)["status"] == "queued"
        wait_status(scorer, 2, "scoring")
        code = scorer.stop(sig)
        assert code == (0 if sig == signal.SIGTERM else -signal.SIGKILL)
        status, n_losses = db_status(scorer, 2)
        assert n_losses == 0  # nothing half-stored
        assert status == ("received" if sig == signal.SIGTERM else "scoring")
        assert db_status(scorer, 4) == ("received", 0)
    finally:
        scorer.stop()  # left running only when the test failed before stopping it

    restarted = scorer.again().start()
    try:
        body = wait_weights(restarted, "run-c", 4, timeout=300)
        assert body["update_index"] == 2
        assert len(all_losses(restarted.base_url, "run-c", 2)) == N_SAMPLES
        checkpoints = httpx.get(f"{restarted.base_url}/v1/runs/run-c/checkpoints").json()[
            "checkpoints"
        ]
        assert [c["status"] for c in checkpoints] == ["scored", "scored"]
    finally:
        restarted.stop()
