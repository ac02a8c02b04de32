"""The trainer as tests drive it: one YAML builder for every test config, and the real
`python -m trainer_svc train` as a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from common.wire.errors import ScorerUnavailable
from delta_loss_devtools.children import die_with_parent
from delta_loss_devtools.demo_data import write_dataset
from delta_loss_devtools.fake_scorer import FakeScorer
from delta_loss_devtools.scorer_process import ScorerProcess
from trainer_svc.training.records import read_jsonl

ROOT = Path(__file__).resolve().parents[2]

# 8 optimizer steps of B = 4: warmup 2, then updates at steps 2, 4 and 6.
STEPS = [2, 4, 6]


def trainer_config(tiny_model: Path, data: Path, out: Path, **over: Any) -> dict[str, Any]:
    """A small LoRA run on the tiny model: B = 2 x 2, warmup 2, three updates 2 steps apart."""
    cfg: dict[str, Any] = dict(
        model_name_or_path=str(tiny_model),
        dataset=str(data),
        output_dir=str(out),
        template="llama3",
        cutoff_len=256,
        finetuning_type="lora",
        lora_target="all",
        lora_rank=4,
        lora_alpha=8,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        learning_rate=1e-3,
        num_train_epochs=1.0,
        logging_steps=1,
        save_steps=1000,
        warmup_step=2,
        update_step=2,
        update_times=3,
        selection_mode="sync",
        scorer_wait_seconds=120,
    )
    cfg.update(over)
    return cfg


def write_config(path: Path, tiny_model: Path, data: Path, out: Path, **over: Any) -> Path:
    path.write_text(yaml.safe_dump(trainer_config(tiny_model, data, out, **over)))
    return path


def scorer_keys(scorer: ScorerProcess) -> list[str]:
    """key=value overrides pointing a trainer at this scorer."""
    return [f"scorer_zmq_url={scorer.zmq_url}", f"scorer_http_url={scorer.base_url}"]


class TrainerProcess:
    """`python -m trainer_svc train CONFIG key=value...`, output to a log file."""

    def __init__(self, config: Path, *overrides: str, log: Path, env: dict[str, str] | None = None):
        """env: variables over os.environ (FORCE_TORCHRUN=1, NPROC_PER_NODE=2: under torchrun)."""
        self.log_path = log
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        cmd = [sys.executable, "-m", "trainer_svc", "train", str(config), *overrides]
        with open(log, "ab") as handle:
            self.proc = subprocess.Popen(
                cmd, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, env=env,
                preexec_fn=die_with_parent,
            )  # fmt: skip

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


def run_id_of(out: Path) -> str:
    return yaml.safe_load((out / "run.json").read_text())["run_id"]


def sampled(out: Path) -> list[tuple[int, list[int]]]:
    """(global step, sampled indices) of every update in selections.jsonl."""
    return [(r["global_step"], r["sampled_indices"]) for r in read_jsonl(out / "selections.jsonl")]


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


RUN_SAMPLES = 64  # the demo dataset run_trainer trains on


def run_trainer(tiny_model: Path, scorer: ScorerProcess, tmp_path: Path, mode: str, **extra: Any):
    """`trainer-svc train` on the support config, in `mode`, over RUN_SAMPLES demo samples, to
    the end: (output dir, run id)."""
    data = write_dataset(tmp_path / "data.json", n=RUN_SAMPLES, seed=2)
    out = tmp_path / f"out-{mode}"
    config = write_config(
        tmp_path / f"{mode}.yaml", tiny_model, data, out, plot_loss=True, selection_mode=mode,
        **extra,
    )  # fmt: skip
    train(config, *scorer_keys(scorer), log=tmp_path / f"{mode}.log", timeout=400)
    return out, run_id_of(out)


class FailingAtStep(FakeScorer):
    """Never answers the checkpoint of one step."""

    def __init__(self, n: int, step: int) -> None:
        super().__init__(n)
        self.step = step

    def send_checkpoint(self, checkpoint: Any) -> dict[str, Any]:
        if checkpoint.step == self.step:
            raise ScorerUnavailable("gave up waiting for a reply from the scorer")
        return super().send_checkpoint(checkpoint)
