"""Each update's checkpoint sent off the training thread.

`send` copies the tensors into the snapshot buffer (trainer_svc.training.snapshot: the only part
that blocks training, besides waiting for the previous upload if it is still in flight, since the
buffer is reused) and hands the upload to one background thread, which streams it and waits
for the scorer's ack. What the sending thread raised (the scorer gone, a refusal) is kept
until the trainer takes it (`take_failure`) and applies on_scorer_failure to it. An upload not
acknowledged when the run stops is `unsent`: the stop saves it beside its checkpoint.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from dataclasses import dataclass
from typing import Any

from trainer_svc.scorer.retry import StopRequested, never
from trainer_svc.training.snapshot import CheckpointUpload, HostPinError, Snapshot

logger = logging.getLogger(__name__)

STOP_POLL_SECONDS = 0.1  # how often a wait for the upload in flight looks for a stop request


@dataclass(frozen=True)
class Handoff:
    """What handing one checkpoint over cost the training thread, in seconds."""

    waited: float  # for the previous upload, still in flight, to finish
    copied: float  # the snapshot: one copy of the tensors into the host buffer


@dataclass
class _InFlight:
    upload: CheckpointUpload
    future: Future
    failure_taken: bool = False


class BackgroundSender:
    """send(upload) hands the upload to the sending thread; `send_checkpoint` is what sends
    it (the scorer client's), `cancel` ends a send in progress (from another thread)."""

    def __init__(
        self,
        send_checkpoint: Callable[[CheckpointUpload], dict[str, Any]],
        *,
        cancel: Callable[[], None] = lambda: None,
    ):
        self._send = send_checkpoint
        self._cancel = cancel
        self.snapshot = Snapshot()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-sender")
        self._last: _InFlight | None = None

    def send(self, upload: CheckpointUpload) -> Handoff:
        """Snapshot the upload's tensors and send them in the background. An earlier upload
        still in flight is waited for first; a failure of it stays to be taken."""
        waited = self.wait()
        started = time.perf_counter()
        copy = self.snapshot.take(upload)
        copied = time.perf_counter() - started
        self._last = _InFlight(copy, self._executor.submit(self._send, copy))
        return Handoff(waited, copied)

    def resend(self, upload: CheckpointUpload) -> None:
        """Send an upload a stopped run left unsent (its tensors are not reused elsewhere)."""
        self.wait()
        self._last = _InFlight(upload, self._executor.submit(self._send, upload))

    def wait(self, stop_requested: Callable[[], bool] = never) -> float:
        """Wait until nothing is in flight; the seconds waited. A stop request ends the wait
        with StopRequested (the upload stays in flight)."""
        if self._last is None or self._last.future.done():
            return 0.0
        started = time.perf_counter()
        while not wait_for([self._last.future], timeout=STOP_POLL_SECONDS).done:
            if stop_requested():
                raise StopRequested(
                    f"a stop was requested while the {self._last.upload.describe()} was being sent"
                )
        return time.perf_counter() - started

    def result(self) -> dict[str, Any]:
        """Wait for the last upload and return its ack, or raise what its sending raised."""
        assert self._last is not None, "nothing was sent"
        self._last.failure_taken = True
        return self._last.future.result()

    @property
    def in_flight(self) -> CheckpointUpload | None:
        last = self._last
        return last.upload if last is not None and not last.future.done() else None

    def take_failure(self) -> tuple[CheckpointUpload, BaseException] | None:
        """The last upload and what its sending raised, once, when it has finished failing."""
        last = self._last
        if last is None or last.failure_taken or not last.future.done():
            return None
        error = last.future.exception()
        if error is None:
            return None
        last.failure_taken = True
        return last.upload, error

    @property
    def unsent(self) -> CheckpointUpload | None:
        """The last upload unless the scorer acknowledged it: still in flight, or failed."""
        last = self._last
        if last is None:
            return None
        future = last.future
        if future.done() and not future.cancelled() and future.exception() is None:
            return None
        return last.upload

    def close(self) -> None:
        """Cancel a send in progress, stop the thread, and free the snapshot buffer (its
        page-locking released) once nothing reads it."""
        last = self._last
        if last is not None and not last.future.done() and not last.future.cancel():
            logger.info("%s: its sending is cancelled (the run stops)", last.upload.describe())
            self._cancel()
        self._executor.shutdown(wait=True)
        try:
            self.snapshot.release()
        except HostPinError as error:  # the run's own outcome matters more: logged, not raised
            logger.warning("the snapshot buffer is kept: %s", error)
