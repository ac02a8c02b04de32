"""The trainer under torchrun: training time of one run with 2 processes against 1.

The same run (tiny model, LoRA, alpaca_en_demo, B = 8, 40 steps) as `trainer-svc train`, once
in one process on one core and once with FORCE_TORCHRUN=1 and 2 processes (gloo), one core and
one thread each, each training half of every step's samples. No scorer runs: the run falls
back to uniform weights at once (on_scorer_failure: uniform, addresses with nothing behind
them), so what is timed is the trainer and its collectives. The figure is the Trainer's own
train_runtime (train_results.json); the whole command's wall time, start-up included, is
reported beside it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.util import ALPACA, ROOT, TRAINER_CORE, free_port, pin, python_env

STEPS = dict(warmup_step=10, update_step=10, update_times=3)  # 40 steps
TOY_STEPS = dict(warmup_step=4, update_step=4, update_times=3)  # 16 steps, 32 samples a segment


def _config(
    model_dir: Path, out: Path, per_device: int, accumulation: int, steps: dict, cutoff: int
) -> dict:
    return dict(
        model_name_or_path=str(model_dir),
        dataset=str(ALPACA),
        output_dir=str(out),
        template="plain",
        cutoff_len=cutoff,
        finetuning_type="lora",
        lora_target="all",
        lora_rank=8,
        lora_alpha=16,
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=accumulation,
        learning_rate=1e-3,
        num_train_epochs=1.0,
        logging_steps=1000,
        save_steps=100000,
        report_to="none",
        plot_loss=False,
        scorer_zmq_url=f"tcp://127.0.0.1:{free_port()}",
        scorer_http_url=f"http://127.0.0.1:{free_port()}",
        scorer_wait_seconds=1,
        on_scorer_failure="uniform",
        **steps,
    )


def _run(work: Path, model_dir: Path, processes: int, steps: dict, cutoff: int) -> dict:
    out = work / f"out-{processes}"
    config = work / f"torchrun-{processes}.yaml"
    accumulation = 4 // processes  # B = 2 x accumulation x processes = 8
    config.write_text(yaml.safe_dump(_config(model_dir, out, 2, accumulation, steps, cutoff)))
    env = python_env()
    prefix: list[str] = pin(TRAINER_CORE)
    if processes > 1:
        env.update(FORCE_TORCHRUN="1", NPROC_PER_NODE=str(processes), MASTER_PORT=str(free_port()))
        prefix = []  # one core per process, as the OS gives them
    os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))  # the children inherit it
    start = time.perf_counter()
    done = subprocess.run(
        [*prefix, sys.executable, "-m", "trainer_svc", "train", str(config)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        tail = done.stderr[-3000:]
        raise RuntimeError(f"{processes} process(es): exit {done.returncode}\n{tail}")
    metrics = json.loads((out / "train_results.json").read_text())
    return {"train_runtime": metrics["train_runtime"], "wall": wall}


def measure(
    work: Path, model_dir: Path, *, steps: dict = STEPS, cutoff: int = 256, toy: bool = False
) -> dict:
    """steps: warmup_step, update_step and update_times; toy: 16 steps of short samples, three
    updates as in the full run (at 4 steps, one update, a gloo rank aborted at exit once in
    seven runs, "terminate called without an active exception", which Ranks.close guards
    against; not seen with longer runs)."""
    if toy:
        return measure(work, model_dir, steps=TOY_STEPS, cutoff=64)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        one = _run(Path(tmp), model_dir, 1, steps, cutoff)
        two = _run(Path(tmp), model_dir, 2, steps, cutoff)
    return {
        "steps": steps["warmup_step"] + steps["update_step"] * steps["update_times"],
        "one": one,
        "two": two,
        "ratio": two["train_runtime"] / one["train_runtime"],
    }
