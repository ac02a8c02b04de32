"""Helpers for tests that drive the real trainer (`python -m trainer_svc train`) as a subprocess
against a real scorer (tests.conftest.ScorerProcess)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

from tests.conftest import ROOT, ScorerProcess, make_samples
from trainer_svc.records import read_jsonl

# 8 optimizer steps of B = 4: warmup 2, then updates at steps 2, 4 and 6.
STEPS = [2, 4, 6]


def write_data(path: Path, n: int) -> Path:
    path.write_text(json.dumps(make_samples(n, seed=3)))
    return path


def write_config(path: Path, tiny_model: Path, data: Path, out: Path, **over) -> Path:
    cfg = dict(
        model_name_or_path=str(tiny_model),
        dataset=str(data),
        output_dir=str(out),
        run_id="rel-run",
        template="llama3",
        cutoff_len=256,
        finetuning_type="lora",
        lora_target="all",
        lora_rank=8,
        lora_alpha=16,
        lora_dropout=0.1,  # the trainer's RNG matters: a resume must restore it
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        learning_rate=5e-3,
        num_train_epochs=1.0,
        logging_steps=1,
        save_steps=2,
        warmup_step=2,
        update_step=2,
        update_times=3,
        selection_mode="sync",
        scorer_wait_seconds=120,
    )
    cfg.update(over)
    path.write_text(yaml.safe_dump(cfg))
    return path


def scorer_keys(scorer: ScorerProcess) -> list[str]:
    return [f"scorer_zmq_url={scorer.zmq_url}", f"scorer_http_url={scorer.base_url}"]


def same_ports(scorer: ScorerProcess, *extra: str) -> ScorerProcess:
    """A scorer process on `scorer`'s data directory and ports (a restart)."""
    again = ScorerProcess(scorer.data_dir, *extra)
    again.zmq_url, again.http_port, again.base_url = (
        scorer.zmq_url,
        scorer.http_port,
        scorer.base_url,
    )
    return again


class TrainerProcess:
    """`python -m trainer_svc train CONFIG key=value...`, output to a log file."""

    def __init__(self, config: Path, *overrides: str, log: Path):
        self.log_path = log
        handle = open(log, "ab")  # noqa: SIM115 - closed with the process
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, "-m", "trainer_svc", "train", str(config), *overrides]
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, env=env
        )
        handle.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout: float = 300) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            message = f"trainer still running after {timeout}s:\n{self.log()[-4000:]}"
            raise AssertionError(message) from None

    def kill(self, sig: int = signal.SIGKILL) -> int:
        self.proc.send_signal(sig)
        return self.wait(60)


def train(config: Path, *overrides: str, log: Path, timeout: float = 300) -> str:
    """Runs the trainer to the end; returns its log. Fails the test on a non-zero exit."""
    trainer = TrainerProcess(config, *overrides, log=log)
    code = trainer.wait(timeout)
    assert code == 0, trainer.log()[-4000:]
    return trainer.log()


def wait_until(check, what: str, *procs, timeout: float = 120, every: float = 0.02):
    """Polls check() until it is true; fails early, with its log, if a process in procs (a
    TrainerProcess or ScorerProcess) has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        for proc in procs:
            if proc.proc.poll() is not None:
                raise AssertionError(
                    f"{type(proc).__name__} exited with {proc.proc.returncode} while waiting "
                    f"for {what}:\n{proc.log()[-4000:]}"
                )
        time.sleep(every)
    logs = "\n".join(proc.log()[-2000:] for proc in procs)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{logs}")


def db_status(scorer: ScorerProcess, step: int) -> str | None:
    """The checkpoint's status in the scorer's SQLite file, read directly."""
    db = scorer.data_dir / "scorer.db"
    if not db.exists():
        return None
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            row = conn.execute("SELECT status FROM checkpoints WHERE step = ?", (step,)).fetchone()
    except sqlite3.OperationalError:  # the tables are not there yet
        return None
    return row[0] if row else None


def sampled(out: Path) -> list[tuple[int, list[int]]]:
    """(global step, sampled indices) of every update in selections.jsonl."""
    return [(r["global_step"], r["sampled_indices"]) for r in read_jsonl(out / "selections.jsonl")]


def stored_losses(scorer: ScorerProcess, run_id: str, steps=STEPS) -> dict[int, list]:
    url = f"{scorer.base_url}/v1/runs/{run_id}/losses"
    result = {}
    for step in steps:
        r = httpx.get(url, params={"step": step, "limit": 100000})
        assert r.status_code == 200, r.text
        result[step] = r.json()["losses"]
    return result


def checkpoints(scorer: ScorerProcess, run_id: str) -> list[dict]:
    r = httpx.get(f"{scorer.base_url}/v1/runs/{run_id}/checkpoints")
    assert r.status_code == 200, r.text
    return r.json()


def assert_close(a: dict[int, list], b: dict[int, list], tol: float = 1e-5) -> float:
    """Same steps, same N, every loss within tol (None where the other is None); the max diff."""
    assert sorted(a) == sorted(b)
    worst = 0.0
    for step in a:
        assert len(a[step]) == len(b[step]), step
        for x, y in zip(a[step], b[step], strict=True):
            assert (x is None) == (y is None), step
            if x is not None:
                worst = max(worst, abs(x - y))
    assert worst <= tol, f"losses differ by up to {worst}"
    return worst
