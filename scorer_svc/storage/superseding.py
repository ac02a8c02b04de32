"""Newest first for async runs: a waiting checkpoint that a newer one of its run replaced is
never scored, since its trainer draws from the newest weights only."""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy.orm import Session

from scorer_svc.storage import checkpoints as checkpoint_store
from scorer_svc.storage.tables import Run

log = logging.getLogger(__name__)


def discard_superseded(session: Session, run: Run, *, keep: bool) -> int:
    """Supersede an async run's checkpoints that a newer one replaced while they waited, and
    remove their tensors (unless kept on purpose); how many."""
    paths = checkpoint_store.supersede(session, run=run)
    if not keep:
        for path in paths:
            Path(path).unlink(missing_ok=True)
    if paths:
        log.info(
            "run %s: %d waiting checkpoint(s) superseded by a newer one", run.run_id, len(paths)
        )
    return len(paths)
