"""How far the worker is with the checkpoint it scores: samples scored of N, and when it
should be done. Written by the worker after each batch, read by the API's 202 answers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    scored: int
    total: int
    seconds: float  # since scoring began

    @property
    def eta_seconds(self) -> float | None:
        """The time left at the rate so far; None before the first batch is done."""
        if self.scored <= 0:
            return None
        return self.seconds / self.scored * (self.total - self.scored)

    def describe(self) -> str:
        eta = self.eta_seconds
        left = f", about {eta:.0f}s left" if eta is not None else ""
        return f"{self.scored} of {self.total} samples scored{left}"


class ScoringProgress:
    """Progress by checkpoint id, for the checkpoints being scored now. Thread-safe."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._started: dict[int, tuple[float, int]] = {}  # id -> (start, total)
        self._scored: dict[int, int] = {}

    def start(self, checkpoint_id: int, total: int) -> None:
        with self._lock:
            self._started[checkpoint_id] = (self._clock(), total)
            self._scored[checkpoint_id] = 0

    def advance(self, checkpoint_id: int, samples: int) -> None:
        with self._lock:
            if checkpoint_id in self._scored:
                self._scored[checkpoint_id] += samples

    def finish(self, checkpoint_id: int) -> None:
        with self._lock:
            self._started.pop(checkpoint_id, None)
            self._scored.pop(checkpoint_id, None)

    def get(self, checkpoint_id: int) -> Progress | None:
        with self._lock:
            if checkpoint_id not in self._started:
                return None
            start, total = self._started[checkpoint_id]
            return Progress(self._scored[checkpoint_id], total, self._clock() - start)
