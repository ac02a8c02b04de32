"""What the Trainer logs (loss, eval loss, learning rate, the selection's figures), sent to the
scorer so that a run's training curves sit beside its selection, as a `report_to` tracker
sends them: batched, from a thread of its own, never holding training up.

`add` only queues (a bounded queue: when the scorer is away for long, the oldest points go
first, and are counted); the thread sends a batch every `interval` seconds, or sooner once a
batch is full. A batch the scorer did not take is kept and sent again with the next; the
first failure of a run of them is logged, and the count once they go through again. `close`
sends what is left, within a bounded time.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from common.api.schemas import MAX_METRICS_BATCH, MetricPoint
from common.validation import KEY_CHARS, MAX_KEY_CHARS

logger = logging.getLogger(__name__)

KEY = re.compile(rf"^{KEY_CHARS}{{1,{MAX_KEY_CHARS}}}$")  # common.api.schemas.MetricKey
INTERVAL_SECONDS = 2.0
MAX_INTERVAL_SECONDS = 30.0
MAX_PENDING = 100_000  # points queued at most while the scorer is away
CLOSE_SECONDS = 10.0


def points_of(step: int, logs: Mapping[str, Any]) -> list[MetricPoint]:
    """The finite numbers of one log line as points at `step` (a bool, a text or a NaN is no
    point; a key the scorer would refuse is left out)."""
    return [
        MetricPoint(key=key, step=step, value=float(value))
        for key, value in logs.items()
        if isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and KEY.match(key)
    ]


class MetricsReporter:
    def __init__(
        self,
        send: Callable[[list[MetricPoint]], None],
        *,
        interval: float = INTERVAL_SECONDS,
        max_pending: int = MAX_PENDING,
        batch: int = MAX_METRICS_BATCH,
    ) -> None:
        self._send = send
        self._interval = interval
        self._batch = batch
        self._pending: deque[MetricPoint] = deque(maxlen=max_pending)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.dropped = 0  # points the full queue let go, oldest first
        self.sent = 0
        self._failing: int | None = None  # failed batches in a row, since the first logged
        self._thread = threading.Thread(target=self._run, name="metrics-reporter", daemon=True)
        self._thread.start()

    def add(self, step: int, logs: Mapping[str, Any]) -> None:
        """Queue the log line's numbers at `step`; never waits on the scorer."""
        points = points_of(step, logs)
        with self._lock:
            overflow = len(self._pending) + len(points) - (self._pending.maxlen or 0)
            if overflow > 0:
                self.dropped += overflow
            self._pending.extend(points)
            full = len(self._pending) >= self._batch
        if full:
            self._wake.set()

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def flush(self) -> bool:
        """Send what is queued, a batch at a time; False once a batch was not taken (it stays
        queued, in front)."""
        while True:
            with self._lock:
                batch = [
                    self._pending.popleft() for _ in range(min(self._batch, len(self._pending)))
                ]
            if not batch:
                return True
            try:
                self._send(batch)
            except Exception as exc:  # the scorer away, refusing: training goes on regardless
                with self._lock:
                    room = (self._pending.maxlen or 0) - len(self._pending)
                    kept = batch[-room:] if room > 0 else []
                    self.dropped += len(batch) - len(kept)
                    self._pending.extendleft(reversed(kept))
                self._failed(exc)
                return False
            self.sent += len(batch)
            self._recovered()

    def close(self, timeout: float = CLOSE_SECONDS) -> None:
        """Stop the thread after a last send of what is queued (waited for `timeout` at most)."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        if self.pending() or self.dropped:
            logger.warning(
                "%d logged value(s) not stored by the scorer (%d dropped while it was away); "
                "the Trainer's log and report_to trackers have them", self.pending(), self.dropped,
            )  # fmt: skip

    def _run(self) -> None:
        while not self._stop.is_set():
            failing = self._failing or 0  # while the scorer does not take them: less often
            self._wake.wait(min(MAX_INTERVAL_SECONDS, self._interval * 2 ** min(failing, 4)))
            self._wake.clear()
            self.flush()
        self.flush()

    def _failed(self, exc: Exception) -> None:
        if self._failing is None:
            self._failing = 0
            logger.warning(
                "the scorer did not store logged metrics (%s); they are kept and sent again, "
                "and training goes on", exc,
            )  # fmt: skip
        self._failing += 1

    def _recovered(self) -> None:
        if self._failing is not None:
            logger.info(
                "the scorer stores logged metrics again (%d batch(es) retried)", self._failing
            )
            self._failing = None
