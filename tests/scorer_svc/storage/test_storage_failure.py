"""The database locked past the timeout while a checkpoint is stored: the checkpoint fails
with the error, /weights says 409, no loss of it is stored, and the failure reaches the
database once the lock is gone."""

import json
import sqlite3

import httpx
import pytest

from common.wire.protocol import encode_checkpoint
from delta_loss_devtools.scorer_process import ScorerProcess
from tests.support.data import make_samples
from tests.support.scorer import (
    db_status,
    lora_checkpoints,
    make_hello,
    register,
    settled_weights,
    wait_status,
    zmq_upload,
)

pytestmark = pytest.mark.slow


def test_locked_database_fails_the_checkpoint_cleanly(tiny_model, tmp_path):
    dataset = tmp_path / "train.json"
    dataset.write_text(json.dumps(make_samples(300, seed=4)))
    scorer = ScorerProcess(
        tmp_path / "scorer", "--batch-size", "1",
        env={"SCORER_DATABASE_BUSY_TIMEOUT_SECONDS": "1"},
    ).start()  # fmt: skip
    try:
        register(scorer.zmq_url, make_hello(tiny_model, dataset, run_id="run-l"))
        frames = encode_checkpoint(
            run_id="run-l", step=2, update_index=1, kind="lora",
            tensors=lora_checkpoints(tiny_model, 1)[0],
        )  # fmt: skip
        assert zmq_upload(scorer.zmq_url, frames)["status"] == "queued"
        wait_status(scorer, 2, "scoring")
        blocker = sqlite3.connect(scorer.data_dir / "scorer.db", timeout=10, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # holds the write lock; readers go on (WAL)
        try:
            r = settled_weights(scorer, "run-l", 2)
            assert r.status_code == 409, r.text
            assert "locked" in r.json()["detail"]
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        wait_status(scorer, 2, "failed", timeout=30)
        status, n_losses = db_status(scorer, 2)
        assert (status, n_losses) == ("failed", 0)
        checkpoint = httpx.get(f"{scorer.base_url}/v1/runs/run-l/checkpoints").json()[
            "checkpoints"
        ][0]
        assert "locked" in checkpoint["error"]
        r = httpx.get(f"{scorer.base_url}/v1/runs/run-l/weights", params={"step": 2})
        assert r.status_code == 409
    finally:
        scorer.stop()
