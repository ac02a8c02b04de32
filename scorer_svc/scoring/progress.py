"""How far the worker is with the checkpoint it scores: samples scored of those it scores, and
when it should be done. Written by the worker after each batch, read by the API's 202 answers.
The time left is reckoned in padded tokens: batches go shortest first, so a rate in samples
would promise the end too soon."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    scored: int  # samples
    total: int  # the samples scored in all (those with a label token)
    seconds: float  # since scoring began
    tokens: int = 0  # padded tokens of the batches done
    total_tokens: int = 0

    @property
    def eta_seconds(self) -> float | None:
        """The time left at the token rate so far; None before the first batch is done."""
        if self.tokens <= 0 or self.total_tokens <= 0:
            return None
        return self.seconds / self.tokens * max(self.total_tokens - self.tokens, 0)

    def describe(self) -> str:
        eta = self.eta_seconds
        left = f", about {eta:.0f}s left" if eta is not None else ""
        return f"{self.scored} of {self.total} samples scored{left}"


class ScoringProgress:
    """Progress by checkpoint id, for the checkpoints being scored now. Thread-safe."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._started: dict[int, tuple[float, int, int]] = {}  # id -> (start, total, tokens)
        self._scored: dict[int, tuple[int, int]] = {}  # id -> (samples, tokens) done

    def start(self, checkpoint_id: int, total: int, total_tokens: int = 0) -> None:
        with self._lock:
            self._started[checkpoint_id] = (self._clock(), total, total_tokens)
            self._scored[checkpoint_id] = (0, 0)

    def advance(self, checkpoint_id: int, samples: int, tokens: int = 0) -> None:
        with self._lock:
            if checkpoint_id in self._scored:
                done, done_tokens = self._scored[checkpoint_id]
                self._scored[checkpoint_id] = (done + samples, done_tokens + tokens)

    def finish(self, checkpoint_id: int) -> None:
        with self._lock:
            self._started.pop(checkpoint_id, None)
            self._scored.pop(checkpoint_id, None)

    def get(self, checkpoint_id: int) -> Progress | None:
        with self._lock:
            if checkpoint_id not in self._started:
                return None
            start, total, total_tokens = self._started[checkpoint_id]
            done, tokens = self._scored[checkpoint_id]
            return Progress(done, total, self._clock() - start, tokens, total_tokens)
