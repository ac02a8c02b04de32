"""Checkpoint failures the database could not store (read-only, locked).

The worker records them here and writes them once the database accepts writes again; the
API serves them as 409 meanwhile. One object, shared by both, safe across threads."""

from __future__ import annotations

import threading


class UnrecordedFailures:
    def __init__(self) -> None:
        self._errors: dict[int, str] = {}
        self._lock = threading.Lock()

    def record(self, checkpoint_id: int, error: str) -> None:
        with self._lock:
            self._errors[checkpoint_id] = error

    def get(self, checkpoint_id: int) -> str | None:
        """The error of the checkpoint's unrecorded failure, None when it has none."""
        with self._lock:
            return self._errors.get(checkpoint_id)

    def pending(self) -> dict[int, str]:
        """A copy of every failure still to be written: checkpoint id to error."""
        with self._lock:
            return dict(self._errors)

    def forget(self, checkpoint_id: int) -> None:
        """The failure is in the database now."""
        with self._lock:
            self._errors.pop(checkpoint_id, None)
