"""A sync run whose every checkpoint is scored in full, and its losses as a matrix: the ground
truth that the scoring budget's fidelity is measured against (bench/fidelity.py)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402

from bench.util import TRAINER_CORE, Scorer, pin_self  # noqa: E402

CONFIG = """
model_name_or_path: {model}
finetuning_type: lora
lora_rank: 8
lora_target: all
dataset: {dataset}
template: plain
cutoff_len: {cutoff}
seed: {seed}
output_dir: {out}
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
scorer_zmq_url: {zmq}
scorer_http_url: {http}
scorer_wait_seconds: 3600
on_scorer_failure: fail
"""


@dataclass(frozen=True)
class LossMatrix:
    """losses[c, i]: sample i's loss at the run's c-th checkpoint (c = 0 the initial one)."""

    losses: np.ndarray
    update_index: np.ndarray  # of each checkpoint
    update_times: int
    window_size: float = 0.2


def run_fully_scored(
    work: Path,
    model_dir: Path,
    dataset: Path,
    *,
    lr: float,
    updates: int,
    every: int,
    batch: int = 4,
    cutoff: int = 256,
    seed: int = 42,
) -> LossMatrix:
    """Train a sync run of `updates` updates `every` steps apart and read back every
    checkpoint's losses from the scorer's database."""
    import torch
    from sqlalchemy import create_engine, select
    from sqlalchemy.orm import Session

    from scorer_svc import crud
    from scorer_svc.models import CheckpointRow
    from trainer_svc.config import load_config
    from trainer_svc.recipe import run

    pin_self(TRAINER_CORE)
    torch.set_num_threads(1)
    name = f"matrix-{dataset.stem}-{lr:g}"
    with Scorer(work / f"{name}-scorer") as scorer:
        config = work / f"{name}.yaml"
        config.write_text(
            CONFIG.format(
                model=model_dir,
                dataset=dataset,
                cutoff=cutoff,
                seed=seed,
                out=work / name,
                batch=batch,
                lr=lr,
                every=every,
                updates=updates,
                steps=every * updates,
                zmq=scorer.zmq_url,
                http=scorer.base_url,
            )  # fmt: skip
        )
        recipe = run(load_config(config))
        run_id = recipe.run_id
    engine = create_engine(f"sqlite:///{work / f'{name}-scorer' / 'scorer.db'}")
    with Session(engine) as session:
        db_run = crud.get_run(session, run_id=run_id)
        assert db_run is not None
        rows = session.scalars(
            select(CheckpointRow)
            .where(CheckpointRow.run_pk == db_run.id)
            .order_by(CheckpointRow.step)
        ).all()
        losses = np.stack([crud.losses_at(session, run=db_run, step=r.step) for r in rows])
        index = np.array([r.update_index for r in rows])
        out = LossMatrix(losses, index, db_run.update_times, db_run.window_size)
    engine.dispose()
    return out
