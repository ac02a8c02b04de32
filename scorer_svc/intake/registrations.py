"""New runs are prepared off the intake thread: the dataset tokenized and checked against the
trainer's fingerprint, the model's tensor names and shapes built. Until that is done the intake
answers the run's hello `registering`, and goes on answering every other request.

Only the intake thread calls `poll`; PREPARERS background threads prepare runs, so one run
whose model or dataset is slow to read holds up no other run's registration either. Clients
(IntakeServer.client_of: a CURVE key, else an address) take turns: the preparers take the next
run of each client in rotation, one client has at most PREPARERS - 1 runs being prepared (a
preparer stays free for the others) and at most PER_CLIENT waiting or being prepared (`busy`
beyond). A run's preparation is bounded before it starts (common.data.datasets reads each
file once; the rows are counted before any is tokenized), so a client waits for another's
run at most that long.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field

from common.wire.errors import Busy, RunMismatch
from common.wire.protocol import Hello
from scorer_svc.scoring.registry import Registry

log = logging.getLogger(__name__)

MAX_PENDING = 32  # runs being prepared or prepared and not yet claimed by their hello
PREPARERS = 3
PER_CLIENT = 16  # runs of one client waiting or being prepared


_IMPORTING = threading.Lock()


def _import_transformers() -> None:
    """Import what preparing a run uses from transformers, one thread at a time: its lazy
    module resolves names unsafely when threads first ask for them together (ImportError)."""
    with _IMPORTING:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: F401


@dataclass(frozen=True)
class _Pending:
    identity: dict
    client: str
    prepared: Future[int]  # the run's number of samples without label tokens


Job = tuple[Hello, Future[int]]


@dataclass(eq=False)
class _Turns:
    """Jobs queued per client, taken in rotation; a client has at most `running` taken and
    not yet done."""

    running: int
    _queued: dict[str, deque[Job]] = field(default_factory=dict)
    _busy: dict[str, int] = field(default_factory=dict)
    _closed: bool = False
    _changed: threading.Condition = field(default_factory=threading.Condition)

    def put(self, client: str, job: Job) -> None:
        with self._changed:
            self._queued.setdefault(client, deque()).append(job)
            self._changed.notify()

    def take(self) -> tuple[str, Job] | None:
        """The next job in rotation (blocks), or None once closed."""
        with self._changed:
            while not self._closed:
                for client in list(self._queued):
                    if self._busy.get(client, 0) < self.running:
                        jobs = self._queued.pop(client)  # to the end of the rotation
                        job = jobs.popleft()
                        if jobs:
                            self._queued[client] = jobs
                        self._busy[client] = self._busy.get(client, 0) + 1
                        return client, job
                self._changed.wait()
            return None

    def done(self, client: str) -> None:
        with self._changed:
            self._busy[client] -= 1
            if not self._busy[client]:
                del self._busy[client]
            self._changed.notify_all()

    def close(self) -> list[Job]:
        """Stop handing out jobs; the jobs never taken."""
        with self._changed:
            self._closed = True
            left = [job for jobs in self._queued.values() for job in jobs]
            self._queued.clear()
            self._changed.notify_all()
            return left


class Registrations:
    def __init__(
        self, registry: Registry, max_pending: int = MAX_PENDING, per_client: int = PER_CLIENT
    ) -> None:
        self.registry = registry
        self.max_pending = max_pending
        self.per_client = per_client
        self._pending: dict[str, _Pending] = {}
        self._turns = _Turns(running=max(1, PREPARERS - 1))
        # Daemon threads: a scorer told to stop does not wait for a run being prepared.
        for n in range(PREPARERS):
            threading.Thread(target=self._serve, name=f"registration-{n}", daemon=True).start()

    def poll(self, hello: Hello, client: str = "") -> int | None:
        """The run's n_no_labels once it is prepared, None while it is being prepared; raises
        what preparing it raised (and forgets it, so a later hello tries again). client: who
        sent the hello, for the per-client limit."""
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
            entry = _Pending(wanted, client, self._start(hello, client))
            self._pending[hello.run_id] = entry
        if not entry.prepared.done():
            return None
        del self._pending[hello.run_id]
        return entry.prepared.result()

    def _start(self, hello: Hello, client: str) -> Future[int]:
        mine = [r for r, e in self._pending.items() if e.client == client and not e.prepared.done()]
        if len(mine) >= self.per_client:
            raise Busy(
                f"this client has {len(mine)} runs being registered already, the most one "
                f"client may at once; send the hello of run {hello.run_id} again in a while"
            )
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
        self._turns.put(client, (hello, prepared))
        return prepared

    def _serve(self) -> None:
        while (taken := self._turns.take()) is not None:
            client, (hello, prepared) = taken
            try:
                if prepared.set_running_or_notify_cancel():
                    self._prepare(hello, prepared)
            finally:
                self._turns.done(client)

    def _prepare(self, hello: Hello, prepared: Future[int]) -> None:
        try:
            _import_transformers()
            self.registry.models.check_loadable(hello)
            data = self.registry.runs.prepare(hello)
            self.registry.models.manifest(hello)  # the base model must build as the trainer says
        except BaseException as exc:
            prepared.set_exception(exc)
        else:
            prepared.set_result(data.n_no_labels)

    def close(self) -> None:
        """Runs not yet started are dropped; those being prepared end with the process."""
        for _, prepared in self._turns.close():
            prepared.cancel()
        for entry in list(self._pending.values()):
            entry.prepared.cancel()
