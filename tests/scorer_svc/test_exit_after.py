"""A scorer told to exit after N runs: the rule on a real database, the watch's thread, and
the real process stopping by itself (with `scorer-svc health` before and after)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from datetime import timedelta

import httpx
import pytest

from delta_loss_devtools.scorer_process import ScorerProcess
from scorer_svc.exit_after import ExitAfterRuns, work_done
from scorer_svc.storage import checkpoints as checkpoint_store
from scorer_svc.storage import runs as run_store
from scorer_svc.storage.db import make_engine, make_sessionmaker
from scorer_svc.storage.tables import now
from tests.support.scorer import (
    lora_checkpoints,
    make_hello,
    register,
    send_checkpoint,
    stored_run_config,
    wait_weights,
)

ME = "scorer-a"
WAIT_SECONDS = 120
RUN_TOKEN = "5" * 32


@pytest.fixture
def sessions(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'scorer.db'}")
    try:
        yield make_sessionmaker(engine)
    finally:
        engine.dispose()


def add_run(session, run_id: str, instance: str = ME):
    config = stored_run_config(run_id, 4)
    return run_store.create_run(session, config=config, n_no_labels=0, instance=instance)


def add_checkpoint(session, run, step: int) -> int:
    received = checkpoint_store.Received(step, 1, "lora", f"{step:064d}", f"step-{step}", 100)
    return checkpoint_store.add_checkpoint(session, run=run, received=received).id


def test_done_once_enough_runs_ended_since_the_start_and_nothing_waits(sessions):
    with sessions() as session:
        since = now()
        old, a, b = add_run(session, "old"), add_run(session, "a"), add_run(session, "b")
        theirs = add_run(session, "theirs", instance="scorer-b")
        run_store.end_run(session, run=old, status="finished", detail=None)
        old.ended_at = since - timedelta(seconds=5)  # ended before this scorer started
        run_store.end_run(session, run=theirs, status="finished", detail=None)  # not this scorer's
        session.commit()
        assert not work_done(session, instance=ME, since=since, runs=1)

        run_store.end_run(session, run=a, status="finished", detail=None)
        assert work_done(session, instance=ME, since=since, runs=1)
        assert not work_done(session, instance=ME, since=since, runs=2)

        waiting = add_checkpoint(session, a, step=2)  # queued after its run ended
        assert not work_done(session, instance=ME, since=since, runs=1)
        checkpoint_store.mark_failed(session, checkpoint_id=waiting, error="gave up")
        assert work_done(session, instance=ME, since=since, runs=1)

        run_store.end_run(session, run=b, status="failed", detail="killed")
        assert work_done(session, instance=ME, since=since, runs=2)
        run_store.reopen_run(session, run=b)  # resumed: training again
        assert not work_done(session, instance=ME, since=since, runs=2)


def test_the_watch_calls_on_done_once_when_the_runs_have_ended(sessions):
    done = threading.Event()
    calls = []

    def on_done(code: int) -> None:
        calls.append(code)
        done.set()

    with sessions() as session:
        run = add_run(session, "a")
    watch = ExitAfterRuns(sessions, instance=ME, runs=1, on_done=on_done, poll_seconds=0.05)
    watch.start()
    try:
        assert not done.wait(0.3)  # polled several times: the run has not ended
        with sessions() as session:
            run_store.end_run(session, run=session.merge(run), status="finished", detail=None)
        assert done.wait(WAIT_SECONDS)
    finally:
        watch.stop()
    assert calls == [0]


def test_the_watch_gives_up_with_exit_code_1_when_the_worker_has_stopped(sessions):
    done = threading.Event()
    calls = []
    alive = [True]

    def on_done(code: int) -> None:
        calls.append(code)
        done.set()

    watch = ExitAfterRuns(sessions, instance=ME, runs=1, on_done=on_done,
                          worker_alive=lambda: alive[0], poll_seconds=0.05)  # fmt: skip
    watch.start()
    try:
        assert not done.wait(0.3)  # the worker runs, no run has ended: nothing to do
        alive[0] = False
        assert done.wait(WAIT_SECONDS)
    finally:
        watch.stop()
    assert calls == [1]


def health(scorer: ScorerProcess) -> subprocess.CompletedProcess:
    env = {**os.environ, "SCORER_HTTP_HOST": "127.0.0.1", "SCORER_HTTP_PORT": str(scorer.http_port)}
    return subprocess.run(
        [sys.executable, "-m", "scorer_svc", "health"],
        env=env, capture_output=True, text=True, timeout=WAIT_SECONDS, check=False,
    )  # fmt: skip


@pytest.mark.slow
def test_a_scorer_exits_by_itself_once_its_run_has_ended(tiny_model, dataset_file, tmp_path):
    scorer = ScorerProcess(tmp_path / "scorer", "--exit-after-runs", "1").start()
    try:
        hello = make_hello(tiny_model, dataset_file, run_token=RUN_TOKEN)
        assert register(scorer.zmq_url, hello)["ok"]
        (tensors,) = lora_checkpoints(tiny_model, 1)
        assert send_checkpoint(scorer.zmq_url, "run-a", 2, 1, tensors)["status"] == "queued"
        wait_weights(scorer, "run-a", 2)
        alive = health(scorer)
        assert (alive.returncode, alive.stdout.strip()) == (
            0, f"http://127.0.0.1:{scorer.http_port}/healthz: 200 ok",
        )  # fmt: skip
        assert scorer.proc is not None and scorer.proc.poll() is None  # the run is not over

        ended = httpx.post(
            f"{scorer.base_url}/v1/runs/run-a/end",
            json={"status": "finished", "detail": None},
            headers={"X-Run-Token": RUN_TOKEN},  # as its trainer reports it
        )
        assert ended.status_code == 200, ended.text
        assert scorer.proc.wait(WAIT_SECONDS) == 0, scorer.log()
        assert "stopping (exit_after_runs)" in scorer.log()
        gone = health(scorer)
        assert gone.returncode == 1 and "no answer" in gone.stdout, gone
    finally:
        scorer.stop()
