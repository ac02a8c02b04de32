"""Shared pieces: core pinning, a scorer subprocess, medians, RSS, the dataset path."""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from delta_loss_devtools.scorer_process import (  # noqa: F401 - re-exported
    ScorerProcess,
    free_port,
)
from delta_loss_devtools.scorer_process import memory_bytes as rss_bytes
from delta_loss_devtools.waiting import wait_until

ROOT = Path(__file__).resolve().parents[1]


def _alpaca() -> Path:
    """$BENCH_ALPACA, else ../shared/data beside the checkout (it is read, never copied)."""
    if os.environ.get("BENCH_ALPACA"):
        return Path(os.environ["BENCH_ALPACA"])
    return ROOT.parent / "shared" / "data" / "alpaca_en_demo.json"


ALPACA = _alpaca()
# One thread per process: the trainer and the scorer each get one of the two cores.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
              "TQDM_DISABLE": "1"}  # fmt: skip
TRAINER_CORE, SCORER_CORE = 0, 1

# A LoRA run of the tiny model with an update every {every} steps, as bench/cadence.py and
# bench/loss_matrix.py train it.
LORA_RUN = """
model_name_or_path: {model}
finetuning_type: lora
lora_rank: 8
lora_target: all
dataset: {dataset}
template: plain
cutoff_len: {cutoff}
seed: 42
output_dir: {out}
run_id: {run_id}
logging_steps: 1000
save_steps: 100000
report_to: none
overwrite_output_dir: true
per_device_train_batch_size: {batch}
learning_rate: {lr}
num_train_epochs: 1.0
lr_scheduler_type: constant
warmup_step: {every}
update_step: {every}
update_times: {updates}
train_step: {steps}
selection_mode: {mode}
score_budget: {budget}
scorer_zmq_url: {zmq}
scorer_http_url: {http}
scorer_wait_seconds: 3600
on_scorer_failure: fail
"""


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def pin(core: int) -> list[str]:
    """`taskset -c CORE` when taskset exists and the core does, else nothing."""
    if shutil.which("taskset") and core < (os.cpu_count() or 1):
        return ["taskset", "-c", str(core)]
    return []


def pin_self(core: int) -> None:
    if hasattr(os, "sched_setaffinity") and core < (os.cpu_count() or 1):
        os.sched_setaffinity(0, {core})


def python_env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {
        **os.environ,
        **ONE_THREAD,
        "PYTHONUNBUFFERED": "1",
        "CUDA_VISIBLE_DEVICES": "",  # the CPU sections' trainers and scorers: no GPU
        "PYTHONPATH": f"{ROOT}{os.pathsep}{path}" if path else str(ROOT),
    }


class Scorer(ScorerProcess):
    """The scorer pinned to the scorer's core, one thread, on the CPU, quiet logs."""

    def __init__(
        self, data_dir: Path, *extra: str, core: int | None = SCORER_CORE, ranks: int = 1
    ) -> None:
        """core: the one core it runs on (None: any); ranks: processes under torchrun."""
        # The benchmarks' models and data lie in a temporary folder, and in ALPACA's.
        scratch = tempfile.gettempdir()
        roots = ["--model-root", scratch, "--data-root", scratch, "--data-root", str(ALPACA.parent)]
        super().__init__(
            data_dir,
            "--log-level",
            "WARNING",
            "--device",
            "cpu",  # a GPU is bench/gpu.py's alone
            *roots,
            *extra,
            env=python_env(),
            log_path=data_dir.parent / f"{data_dir.name}.log",
            prefix=pin(core) if core is not None else [],
            ranks=ranks,
        )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss(self, field: str = "VmRSS") -> int:
        return rss_bytes(self.pid, field)


def wait_scored(client: httpx.Client, run_id: str, step: int) -> float:
    """Seconds from the ack to the weights being served, measured without disturbing the
    scorer: poll the checkpoint list every 0.25 s (an HTTP request every few ms would take
    the scorer's CPU), then (finished_at - received_at) from the scorer's own clock, which
    it stamps just before the ack and just after the losses are committed, plus the time
    of the first /weights request (octet-stream), which builds the weights."""

    def settled() -> dict[str, Any] | None:
        rows = client.get(f"/v1/runs/{run_id}/checkpoints", params={"max_results": 1000}).json()[
            "checkpoints"
        ]
        row = next(r for r in rows if r["step"] == step)
        if row["status"] == "failed":
            raise RuntimeError(f"step {step} failed: {row['error']}")
        return row if row["status"] == "scored" else None

    row: dict[str, Any] = wait_until(settled, f"step {step} scored", timeout=3600, every=0.25)
    start = time.perf_counter()
    r = client.get(
        f"/v1/runs/{run_id}/weights",
        params={"step": step},
        headers={"Accept": "application/octet-stream"},
    )
    served = time.perf_counter() - start
    if r.status_code != 200:
        raise RuntimeError(f"weights of step {step}: HTTP {r.status_code} {r.text[:300]}")
    scored = datetime.fromisoformat(row["finished_at"]) - datetime.fromisoformat(row["received_at"])
    return scored.total_seconds() + served
