"""One scorer over two processes (torchrun, gloo on the CPU): each rank scores a share of the
samples balanced by tokens, and the stored losses equal a one-process scorer's."""

import os
import signal
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from delta_loss_devtools.scorer_process import ScorerProcess
from scorer_svc.scoring.batches import Batch
from scorer_svc.scoring.ranks import share
from tests.support.data import write_samples
from tests.support.scorer import (
    all_losses,
    db_status,
    lora_checkpoints,
    make_hello,
    register,
    send_checkpoint,
    settled_checkpoints,
    wait_status,
    wait_weights,
)
from tests.support.trainer import run_trainer


def _batch(first: int, rows: int, width: int) -> Batch:
    ids = torch.ones(rows, width, dtype=torch.long)
    return Batch(list(range(first, first + rows)), ids, torch.ones_like(ids), ids)


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_shares_are_disjoint_cover_every_batch_and_balance_tokens(world):
    batches = [_batch(10 * i, 1 + i % 4, 8 + 7 * (i % 5)) for i in range(23)]
    shares = share(batches, world)
    assert len(shares) == world
    flat = [p for s in shares for p in s]
    assert sorted(flat) == list(range(len(batches)))  # each batch once
    loads = [sum(batches[p].real_tokens for p in s) for s in shares]
    assert max(loads) - min(loads) <= max(b.real_tokens for b in batches)
    assert share(batches, world) == shares  # the same split on every rank


def test_fewer_batches_than_ranks_leave_some_ranks_idle():
    assert share([_batch(0, 2, 4)], 3) == [[0], [], []]


slow = pytest.mark.slow


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    scorer = ScorerProcess(tmp_path_factory.mktemp("ranks") / "scorer", ranks=2).start()
    yield scorer
    scorer.stop()  # torchrun itself exits 1 on SIGTERM, once its ranks have stopped
    log = scorer.log()
    assert "rank 1: stopping, as rank 0 asks" in log and "scorer_svc.main: stopped" in log


@slow
def test_two_ranks_store_the_losses_of_one(two_ranks, tiny_model, tmp_path):
    health = httpx.get(f"{two_ranks.base_url}/healthz").json()
    assert health == {"status": "ok", "ranks": 2, "ranks_alive": True,
                      "instance": health["instance"], "detail": None}  # fmt: skip
    assert (two_ranks.data_dir / "instance_id").read_text().strip() == health["instance"]
    data = write_samples(tmp_path / "d.json", 40, seed=5)
    # the same run in full and under a scoring budget: its third checkpoint measures 10
    hellos = {
        "ranks": make_hello(tiny_model, data, run_id="ranks"),
        "ranks-b": make_hello(tiny_model, data, run_id="ranks-b", score_budget=10),
    }
    checkpoints = list(zip((2, 4, 6), (1, 2, 3), lora_checkpoints(tiny_model, 3), strict=True))
    with ScorerProcess(tmp_path / "one") as one:
        for scorer in (one, two_ranks):
            for run_id, hello in hellos.items():
                assert register(scorer.zmq_url, hello)["status"] == "registered"
                for step, k, tensors in checkpoints:
                    reply = send_checkpoint(scorer.zmq_url, run_id, step, k, tensors)
                    assert reply["status"] == "queued"
                wait_weights(scorer, run_id, 6)
        for run_id in hellos:
            for step, _, _ in checkpoints:
                single = np.array(all_losses(one.base_url, run_id, step))
                split = np.array(all_losses(two_ranks.base_url, run_id, step))
                budgeted = run_id == "ranks-b" and step == 6
                assert (
                    np.isfinite(single).sum() == 10 if budgeted else np.isfinite(single).sum() > 30
                )
                np.testing.assert_allclose(split, single, rtol=0, atol=1e-6, equal_nan=True)
    assert "rank 1 " in two_ranks.log()  # the second rank logged its share


@slow
def test_a_training_run_against_two_ranks(two_ranks, tiny_model, tmp_path):
    out, run_id = run_trainer(tiny_model, two_ranks, tmp_path, "sync")
    rows = settled_checkpoints(two_ranks, run_id, 3)
    assert [r["status"] for r in rows] == ["scored"] * 3
    assert len((out / "selections.jsonl").read_text().splitlines()) == 3


def _rank_pid(launcher_pid: int, rank: int) -> int:
    """The pid of the torchrun worker whose RANK is rank."""
    for child in Path(f"/proc/{launcher_pid}/task/{launcher_pid}/children").read_text().split():
        environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in environ:
            return int(child)
    raise AssertionError(f"no worker of rank {rank} under {launcher_pid}")


@slow
def test_a_rank_killed_while_scoring_leaves_nothing_stored_and_the_restart_scores_it(
    tiny_model, tmp_path
):
    data = write_samples(tmp_path / "d.json", 1500, seed=7)  # a share lasts a few seconds
    hello = make_hello(tiny_model, data, run_id="lost")
    first, second = lora_checkpoints(tiny_model, 2)
    scorer = ScorerProcess(tmp_path / "scorer", "--batch-size", "1", ranks=2).start()
    try:
        assert register(scorer.zmq_url, hello)["status"] == "registered"
        assert send_checkpoint(scorer.zmq_url, "lost", 2, 1, first)["status"] == "queued"
        wait_status(scorer, 2, "scoring")
        os.kill(_rank_pid(scorer.proc.pid, 1), signal.SIGKILL)
        assert scorer.proc.wait(120) != 0  # torchrun stops the whole scorer
    finally:
        scorer.stop()
    status, stored = db_status(scorer, 2)
    assert stored == 0 and status in ("received", "scoring"), (status, scorer.log()[-3000:])
    restarted = scorer.again().start()
    try:
        assert wait_weights(restarted, "lost", 2)["update_index"] == 1  # scored after all
        assert send_checkpoint(restarted.zmq_url, "lost", 4, 2, second)["status"] == "queued"
        assert wait_weights(restarted, "lost", 4)["update_index"] == 2
    finally:
        restarted.stop()
