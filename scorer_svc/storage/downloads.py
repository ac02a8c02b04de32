"""A run's whole loss history as files: CSV and Parquet, both streamed a checkpoint at a time.

Rows are long-form: step, update_index, sample_index, loss, delta (initial loss - loss), by
step then sample index; a loss that is not finite is an empty CSV field or a Parquet null.

Each checkpoint's losses are read in a short transaction of their own, and the connection goes
back to the pool while the rows are written out: a slow reader holds no connection the
worker, the intake or /weights need. A Parquet file is written to a temporary file (one row
group per checkpoint) and then sent, so memory holds one checkpoint at a time.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy.orm import Session, sessionmaker

from scorer_svc.storage import checkpoints as checkpoint_store
from scorer_svc.storage import losses as loss_store
from scorer_svc.storage import runs as run_store
from scorer_svc.storage.tables import SCORED

COLUMNS = ("step", "update_index", "sample_index", "loss", "delta")
SCHEMA = pa.schema(
    [
        ("step", pa.int64()),
        ("update_index", pa.int32()),
        ("sample_index", pa.int32()),
        ("loss", pa.float64()),
        ("delta", pa.float64()),
    ]
)
CHUNK_BYTES = 1 << 20


def scored_losses(
    sessions: sessionmaker[Session], run_id: str
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """(step, update_index, losses, deltas) of each scored checkpoint of the run, by step;
    nothing when the run does not exist (deleted meanwhile)."""
    with sessions() as session:
        run = run_store.get_run(session, run_id=run_id)
        if run is None:
            return
        steps = [
            (c.step, c.update_index)
            for c in checkpoint_store.list_checkpoints(session, run=run)
            if c.status == SCORED
        ]
        initial = None
        if run.initial_step is not None and any(s == run.initial_step for s, _ in steps):
            initial = loss_store.losses_at(session, run=run, step=run.initial_step)
        session.commit()  # the connection goes back to the pool between checkpoints
        for step, update_index in steps:
            losses = loss_store.losses_at(session, run=run, step=step)
            session.commit()
            deltas = initial - losses if initial is not None else np.full_like(losses, np.nan)
            yield step, update_index, losses, deltas


def _text(values: np.ndarray) -> np.ndarray:
    """Each value's shortest round-trip text; empty where not finite."""
    return np.where(np.isfinite(values), values.astype(str), "")


def losses_csv(sessions: sessionmaker[Session], run_id: str) -> Iterator[str]:
    """The CSV text: the header, then one chunk per checkpoint."""
    yield ",".join(COLUMNS) + "\n"
    for step, update_index, losses, deltas in scored_losses(sessions, run_id):
        prefix = f"{step},{update_index},"
        yield "".join(
            f"{prefix}{i},{loss},{delta}\n"
            for i, (loss, delta) in enumerate(zip(_text(losses), _text(deltas), strict=True))
        )


def losses_parquet(
    sessions: sessionmaker[Session], run_id: str, *, spool: Path | None = None
) -> Iterator[bytes]:
    """The Parquet file's bytes, in chunks; spool: the folder of the temporary file."""
    with tempfile.TemporaryFile(dir=spool) as sink:
        with pq.ParquetWriter(sink, SCHEMA) as writer:
            for step, update_index, losses, deltas in scored_losses(sessions, run_id):
                n = losses.size
                writer.write_table(
                    pa.table(
                        {
                            "step": pa.array(np.full(n, step, dtype=np.int64)),
                            "update_index": pa.array(np.full(n, update_index, dtype=np.int32)),
                            "sample_index": pa.array(np.arange(n, dtype=np.int32)),
                            "loss": pa.array(losses, mask=~np.isfinite(losses)),
                            "delta": pa.array(deltas, mask=~np.isfinite(deltas)),
                        },
                        schema=SCHEMA,
                    )
                )
        sink.seek(0)
        while block := sink.read(CHUNK_BYTES):
            yield block
