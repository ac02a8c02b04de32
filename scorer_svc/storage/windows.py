"""Queries of the windows and estimates tables: what ranked a scored checkpoint's samples
(checkpoints.store_scores writes them with its losses), keyword-only."""

from __future__ import annotations

import numpy as np
from sqlalchemy.orm import Session

from common.budget import Estimates
from scorer_svc.storage.tables import EstimateRow, Run, WindowRow


def get_window(session: Session, *, run: Run, step: int) -> WindowRow | None:
    return session.get(WindowRow, (run.id, step))


def get_estimates(session: Session, *, run: Run, step: int) -> Estimates | None:
    """What ranked a budgeted checkpoint's samples; None for a checkpoint measured in full."""
    row = session.get(EstimateRow, (run.id, step))
    if row is None:
        return None
    return Estimates(
        np.frombuffer(row.delta, dtype="<f8").astype(np.float64),
        np.frombuffer(row.age, dtype="<i4").astype(np.int32),
    )
