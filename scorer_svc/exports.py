"""A run's whole loss history as files: CSV (streamed a checkpoint at a time) and Parquet.

Rows are long-form: step, update_index, sample_index, loss, delta (initial loss - loss), by
step then sample index; a loss that is not finite is an empty CSV field or a Parquet null.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy.orm import Session, sessionmaker

from scorer_svc import crud
from scorer_svc.models import SCORED, Run

COLUMNS = ("step", "update_index", "sample_index", "loss", "delta")


def _scored(session: Session, run: Run) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """(step, update_index, losses, deltas) of each scored checkpoint, by step."""
    steps = [
        (c.step, c.update_index)
        for c in crud.list_checkpoints(session, run=run)
        if c.status == SCORED
    ]
    initial = None
    if run.initial_step is not None and any(step == run.initial_step for step, _ in steps):
        initial = crud.losses_at(session, run=run, step=run.initial_step)
    for step, update_index in steps:
        losses = crud.losses_at(session, run=run, step=step)
        deltas = initial - losses if initial is not None else np.full_like(losses, np.nan)
        yield step, update_index, losses, deltas


def _field(value: float) -> str:
    return repr(float(value)) if np.isfinite(value) else ""


def losses_csv(sessions: sessionmaker[Session], run_id: str) -> Iterator[str]:
    """The CSV text, a header then one chunk per checkpoint, read in a session of its own (a
    streamed answer outlives the request's session)."""
    yield ",".join(COLUMNS) + "\n"
    with sessions() as session:
        run = crud.get_run(session, run_id=run_id)
        if run is None:  # deleted meanwhile: the file ends after its header
            return
        for step, update_index, losses, deltas in _scored(session, run):
            yield "".join(
                f"{step},{update_index},{i},{_field(loss)},{_field(delta)}\n"
                for i, (loss, delta) in enumerate(zip(losses, deltas, strict=True))
            )


def losses_parquet(session: Session, run: Run) -> bytes:
    """The Parquet file's bytes."""
    parts = list(_scored(session, run))
    n = sum(losses.size for *_, losses, _ in parts)

    def column(values: list[np.ndarray], dtype: str) -> np.ndarray:
        return np.concatenate(values).astype(dtype) if values else np.empty(0, dtype)

    losses = column([p[2] for p in parts], "float64")
    deltas = column([p[3] for p in parts], "float64")
    table = pa.table(
        {
            "step": pa.array(column([np.full(p[2].size, p[0]) for p in parts], "int64")),
            "update_index": pa.array(column([np.full(p[2].size, p[1]) for p in parts], "int32")),
            "sample_index": pa.array(column([np.arange(p[2].size) for p in parts], "int32")),
            "loss": pa.array(losses, mask=~np.isfinite(losses)),
            "delta": pa.array(deltas, mask=~np.isfinite(deltas)),
        }
    )
    assert table.num_rows == n
    out = io.BytesIO()
    pq.write_table(table, out)
    return out.getvalue()
