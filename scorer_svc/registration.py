"""New runs are prepared off the intake thread: the dataset tokenized and checked against the
trainer's fingerprint, the model's tensor names and shapes built. Until that is done the intake
answers the run's hello `registering`, and goes on answering every other request.

Only the intake thread calls `poll`; PREPARERS background threads prepare runs, so one run
whose model or dataset is slow to read holds up no other run's registration either.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass

from common.errors import Busy, RunMismatch
from common.protocol import Hello
from scorer_svc.registry import Registry

log = logging.getLogger(__name__)

MAX_PENDING = 32  # runs being prepared or prepared and not yet claimed by their hello
PREPARERS = 2


@dataclass(frozen=True)
class _Pending:
    identity: dict
    prepared: Future[int]  # the run's number of samples without label tokens


class Registrations:
    def __init__(self, registry: Registry, max_pending: int = MAX_PENDING) -> None:
        self.registry = registry
        self.max_pending = max_pending
        self._pending: dict[str, _Pending] = {}
        self._jobs: queue.SimpleQueue[tuple[Hello, Future[int]] | None] = queue.SimpleQueue()
        # Daemon threads: a scorer told to stop does not wait for a run being prepared.
        for n in range(PREPARERS):
            threading.Thread(target=self._serve, name=f"registration-{n}", daemon=True).start()

    def poll(self, hello: Hello) -> int | None:
        """The run's n_no_labels once it is prepared, None while it is being prepared; raises
        what preparing it raised (and forgets it, so a later hello tries again)."""
        entry = self._pending.get(hello.run_id)
        wanted = hello.model_dump(exclude={"token", "run_token"})
        if entry is not None and entry.identity != wanted:
            if not entry.prepared.done():
                raise RunMismatch(
                    f"run {hello.run_id} is being registered with other settings: use another "
                    "run id for a different run"
                )
            del self._pending[hello.run_id]
            entry = None
        if entry is None:
            entry = _Pending(wanted, self._start(hello))
            self._pending[hello.run_id] = entry
        if not entry.prepared.done():
            return None
        del self._pending[hello.run_id]
        return entry.prepared.result()

    def _start(self, hello: Hello) -> Future[int]:
        if len(self._pending) >= self.max_pending:
            for run_id in [r for r, e in self._pending.items() if e.prepared.done()]:
                del self._pending[run_id]  # prepared, and their trainers never came back
        if len(self._pending) >= self.max_pending:
            raise Busy(
                f"{len(self._pending)} runs are being registered already; send the hello again "
                "in a while"
            )
        log.info("registering run %s: tokenizing its dataset, building its model", hello.run_id)
        prepared: Future[int] = Future()
        self._jobs.put((hello, prepared))
        return prepared

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            hello, prepared = job
            if not prepared.set_running_or_notify_cancel():
                continue
            try:
                self.registry.check_loadable(hello)
                data = self.registry.prepare(hello)
                self.registry.manifest(hello)  # the base model must build as the trainer says
            except BaseException as exc:
                prepared.set_exception(exc)
            else:
                prepared.set_result(data.n_no_labels)

    def close(self) -> None:
        """Runs not yet started are dropped; those being prepared end with the process."""
        for entry in list(self._pending.values()):
            entry.prepared.cancel()
        for _ in range(PREPARERS):
            self._jobs.put(None)
