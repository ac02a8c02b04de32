"""Writing and reading one checkpoint's losses in a real SQLite file."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from scorer_svc import crud
from scorer_svc.db import make_engine, make_sessionmaker

FAKE_HELLO = {
    "run_id": "bench",
    "base_model": "none",
    "finetuning_type": "lora",
    "fingerprint": "0" * 64,
    "window_size": 0.2,
    "update_times": 50,
}


def measure(n: int = 200_000, checkpoints: int = 3) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(f"sqlite:///{Path(tmp) / 'bench.db'}")
        sessions = make_sessionmaker(engine)
        writes, reads = [], []
        with sessions() as session:
            run = crud.create_run(session, config={**FAKE_HELLO, "n_samples": n}, n_no_labels=0)
            rng = np.random.default_rng(0)
            for step in range(checkpoints):
                checkpoint = crud.add_checkpoint(
                    session, run=run, step=step, update_index=1, kind="lora",
                    sha256="0" * 64, path="-", n_bytes=0,
                )  # fmt: skip
                losses = rng.random(n) * 3
                start = time.perf_counter()
                crud.store_scores(
                    session, checkpoint=checkpoint, losses=losses, window=None, seconds=1.0
                )
                writes.append(time.perf_counter() - start)
                start = time.perf_counter()
                got = crud.losses_at(session, run=run, step=step)
                reads.append(time.perf_counter() - start)
                assert np.allclose(got, losses)
        engine.dispose()
    write = float(np.median(writes))
    return {
        "n": n,
        "write_seconds": write,
        "rows_per_second": n / write,
        "read_seconds": float(np.median(reads)),
    }
