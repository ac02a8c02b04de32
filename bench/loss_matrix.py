"""A sync run whose every checkpoint is scored in full, and its losses as a matrix: the ground
truth that the scoring budget's fidelity is measured against (bench/fidelity.py)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402

from bench.util import LORA_RUN, TRAINER_CORE, Scorer, pin_self  # noqa: E402


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
) -> LossMatrix:
    """Train a sync run of `updates` updates `every` steps apart and read back every
    checkpoint's losses from the scorer's database."""
    import torch
    from sqlalchemy import create_engine, select

    from scorer_svc.storage import losses as loss_store
    from scorer_svc.storage import runs as run_store
    from scorer_svc.storage.db import make_sessionmaker
    from scorer_svc.storage.tables import CheckpointRow
    from trainer_svc.config.train_config import load_config
    from trainer_svc.training.recipe import run

    pin_self(TRAINER_CORE)
    torch.set_num_threads(1)
    name = f"matrix-{dataset.stem}-{lr:g}"
    with Scorer(work / f"{name}-scorer") as scorer:
        config = work / f"{name}.yaml"
        config.write_text(
            LORA_RUN.format(
                model=model_dir,
                dataset=dataset,
                cutoff=cutoff,
                out=work / name,
                run_id=name,
                batch=batch,
                lr=lr,
                every=every,
                updates=updates,
                steps=every * updates,
                mode="sync",
                budget=1.0,
                zmq=scorer.zmq_url,
                http=scorer.base_url,
            )  # fmt: skip
        )
        recipe = run(load_config(config))
        run_id = recipe.run_id
    engine = create_engine(f"sqlite:///{work / f'{name}-scorer' / 'scorer.db'}")
    with make_sessionmaker(engine)() as session:
        db_run = run_store.get_run(session, run_id=run_id)
        assert db_run is not None
        rows = session.scalars(
            select(CheckpointRow)
            .where(CheckpointRow.run_pk == db_run.id)
            .order_by(CheckpointRow.step)
        ).all()
        losses = np.stack([loss_store.losses_at(session, run=db_run, step=r.step) for r in rows])
        index = np.array([r.update_index for r in rows])
        out = LossMatrix(losses, index, db_run.update_times, db_run.window_size)
    engine.dispose()
    return out
