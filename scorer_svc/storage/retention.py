"""Deleting a run's history: its rows, then its checkpoint files. Only the scorer instance that
owns a run deletes it (another's files are on another disk), and never while a checkpoint of it
is queued or being scored (its trainer is still sending)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from scorer_svc.storage import runs as run_store
from scorer_svc.storage.checkpoint_files import checkpoint_path
from scorer_svc.storage.tables import Run

log = logging.getLogger(__name__)


class NotOwner(Exception):
    """The run belongs to another scorer instance (the message names it)."""


class RunBusy(Exception):
    """A checkpoint of the run is queued or being scored (the message says what to do)."""


@dataclass(frozen=True)
class Deleted:
    run_id: str
    checkpoints: int
    losses: int
    files: int  # checkpoint files removed from this scorer's disk


def delete_run(
    session: Session, run: Run, *, instance: str, data_dir: Path, force: bool = False
) -> Deleted:
    """Remove the run: its rows in one transaction, then the files under data_dir its rows
    named (a crash between the two leaves only unreferenced files). force: delete another
    instance's run, or one with queued checkpoints (offline, its scorer stopped)."""
    run_id = run.run_id
    if run.instance not in (None, instance) and not force:
        raise NotOwner(
            f"run {run_id} belongs to the scorer instance {run.instance!r} (this one is "
            f"{instance!r}): delete it there, where its checkpoint files are"
        )
    removed = run_store.delete_run(session, run=run, keep_pending=not force)
    if removed is None:
        raise RunBusy(
            f"run {run_id} has checkpoints queued or being scored: delete it once its trainer "
            f"has finished and they are scored (GET /v1/runs/{run_id}/checkpoints shows them)"
        )
    files = 0
    root = data_dir.resolve()
    for name in removed.paths:
        path = Path(name)
        try:
            if path.resolve().is_relative_to(root) and path.is_file():
                path.unlink()
                files += 1
        except OSError as exc:  # the rows are gone: an unreferenced file is all that stays
            log.warning("run %s deleted, but not its file %s: %s", run_id, path, exc)
    _remove_run_folder(checkpoint_path(data_dir, run_id, 0).parent, root)
    log.info(
        "deleted run %s: %d checkpoints, %d losses, %d files",
        run_id,
        removed.checkpoints,
        removed.losses,
        files,
    )
    return Deleted(run_id, removed.checkpoints, removed.losses, files)


def _remove_run_folder(folder: Path, root: Path) -> None:
    """The run's checkpoint folder, once empty of what the scorer writes there (a file being
    written when the run was deleted included); left as it is when it is a link or lies
    outside the data_dir."""
    if folder.is_symlink() or not folder.is_dir() or not folder.resolve().is_relative_to(root):
        return
    try:
        for leftover in folder.iterdir():
            if leftover.is_file() and leftover.suffix in (".safetensors", ".partial"):
                leftover.unlink()
        folder.rmdir()
    except OSError as exc:
        log.warning("run deleted, but not its folder %s: %s", folder, exc)
