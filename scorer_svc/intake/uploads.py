"""Checkpoint uploads in progress: each one's chunks checked and written to its file as they
arrive (common.wire.protocol describes the upload), so the scorer never holds a payload whole.

An upload is open from its `checkpoint` message to its `commit`. An upload id that was refused
or committed is remembered as closed, and whatever else arrives for it is dropped without a
reply (the trainer had its one reply). An upload the scorer dropped (idle for `idle_seconds`,
or giving way to another) is forgotten instead: its next chunk is answered `upload_lost`, and
the trainer sends the checkpoint again at once. Another upload of the same run and step from
the same client replaces an open one (the trainer started again).

At most `max_open` are open at once, and at most `per_client` from one client (its CURVE key
where it has one, else its address). When a new upload finds no room, an upload that has
stalled gives up its slot: one idle for `stale_seconds`, or open that long and arriving slower
than MIN_BYTES_PER_SECOND (a client's own first, when the client is at its limit); the slowest
such goes. Partial uploads left hanging or trickling hold no other trainer's upload up for
longer than that. Otherwise the new one is answered `busy` (the trainer sends it again).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from common.wire.errors import Busy, IntegrityError, MalformedMessage
from common.wire.protocol import CheckpointHeader, Chunk, CommitHeader, check_chunk, payload_digest
from scorer_svc.storage.checkpoint_files import CheckpointWriter

log = logging.getLogger(__name__)

IDLE_SECONDS = 60.0
STALE_SECONDS = 5.0
MIN_BYTES_PER_SECOND = 1 << 20  # an upload arriving slower has stalled, when room is needed
MAX_OPEN = 8
PER_CLIENT = 4
CLOSED_REMEMBERED = 4096


@dataclass(eq=False)
class Upload:
    begin: CheckpointHeader
    writer: CheckpointWriter
    last_seen: float
    client: str = ""
    digests: list[str] = field(default_factory=list)
    received: int = 0  # payload bytes
    started: float = field(init=False)

    def __post_init__(self) -> None:
        self.started = self.last_seen

    @property
    def complete(self) -> bool:
        return len(self.digests) == self.begin.n_chunks


class Uploads:
    def __init__(
        self,
        *,
        idle_seconds: float = IDLE_SECONDS,
        stale_seconds: float = STALE_SECONDS,
        max_open: int = MAX_OPEN,
        per_client: int = PER_CLIENT,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.idle_seconds = idle_seconds
        self.stale_seconds = stale_seconds
        self.max_open = max_open
        self.per_client = per_client
        self.clock = clock
        self._open: dict[str, Upload] = {}
        self._closed: OrderedDict[str, None] = OrderedDict()

    def is_closed(self, upload_id: str) -> bool:
        return upload_id in self._closed

    def get(self, upload_id: str) -> Upload | None:
        return self._open.get(upload_id)

    def refuse(self, upload_id: str) -> None:
        """The upload was answered: whatever else comes for it is dropped."""
        upload = self._open.pop(upload_id, None)
        if upload is not None:
            upload.writer.abort()
        self._close(upload_id)

    def _close(self, upload_id: str) -> None:
        self._closed[upload_id] = None
        while len(self._closed) > CLOSED_REMEMBERED:
            self._closed.popitem(last=False)

    def open(
        self, begin: CheckpointHeader, writer: Callable[[], CheckpointWriter], client: str = ""
    ) -> Upload:
        """A new upload from `client`, once there is room for it (else Busy)."""
        if begin.upload in self._open:  # each attempt of a trainer's has a new id
            raise MalformedMessage(f"upload {begin.upload} is open already: use a new id")
        for other in list(self._open.values()):
            same = (other.begin.run_id, other.begin.step, other.client) == (
                begin.run_id, begin.step, client
            )  # fmt: skip
            if same:
                log.info(
                    "run %s step %d: a new upload replaces the one left unfinished",
                    begin.run_id,
                    begin.step,
                )
                self.refuse(other.begin.upload)
        mine = [u for u in self._open.values() if u.client == client]
        if len(mine) >= self.per_client and not self._free_stalled(mine):
            raise Busy(
                f"this client is sending {len(mine)} checkpoints to the scorer already, the "
                "most one client may at once; send it again"
            )
        if len(self._open) >= self.max_open and not self._free_stalled(self._open.values()):
            raise Busy(
                f"the scorer is receiving {len(self._open)} checkpoints already; send it again"
            )
        upload = Upload(begin, writer(), self.clock(), client)
        self._open[begin.upload] = upload
        return upload

    def _free_stalled(self, among: Iterable[Upload]) -> bool:
        """Drop the slowest stalled upload among `among`, if one has; whether one was."""
        now = self.clock()

        def rate(upload: Upload) -> float:
            return upload.received / max(now - upload.started, 1e-9)

        stalled = [
            u
            for u in among
            if now - u.last_seen >= self.stale_seconds
            or (now - u.started >= self.stale_seconds and rate(u) < MIN_BYTES_PER_SECOND)
        ]
        if not stalled:
            return False
        slowest = min(stalled, key=lambda u: (rate(u), u.last_seen))
        log.info(
            "run %s step %d: upload dropped to make room for another: %.0f s since its last "
            "chunk, %d of %d chunks in %.0f s",
            slowest.begin.run_id,
            slowest.begin.step,
            now - slowest.last_seen,
            len(slowest.digests),
            slowest.begin.n_chunks,
            now - slowest.started,
        )
        self._drop(slowest)
        return True

    def _drop(self, upload: Upload) -> None:
        """Forget an upload the trainer still sends: its next chunk is answered upload_lost."""
        self._open.pop(upload.begin.upload, None)
        upload.writer.abort()

    def shift(self, seconds: float) -> None:
        """The intake did not read for `seconds`: no upload counts that time as its own."""
        for upload in self._open.values():
            upload.last_seen += seconds
            upload.started += seconds

    def add(self, upload: Upload, chunk: Chunk) -> None:
        """Check the chunk and write it; a bad one raises (the caller refuses the upload)."""
        check_chunk(upload.begin, chunk, len(upload.digests))
        upload.writer.write(chunk.data)
        upload.digests.append(chunk.header.digest)
        upload.received += memoryview(chunk.data).nbytes
        upload.last_seen = self.clock()

    def check_commit(self, upload: Upload, commit: CommitHeader) -> None:
        begin = upload.begin
        if not upload.complete:
            raise IntegrityError(
                f"upload {begin.upload} is committed after {len(upload.digests)} of its "
                f"{begin.n_chunks} chunks: chunks were lost in transit; send it again"
            )
        actual = payload_digest(upload.digests)
        if actual != commit.digest:
            raise IntegrityError(
                f"checkpoint step {begin.step} has digest {actual}, its commit declares "
                f"{commit.digest}: the checkpoint was corrupted in transit; send it again"
            )

    def finish(self, upload: Upload) -> None:
        """Committed: closed, its file kept."""
        self._open.pop(upload.begin.upload, None)
        self._close(upload.begin.upload)

    def sweep(self) -> list[Upload]:
        """Drop the uploads idle for longer than idle_seconds; the dropped ones."""
        now = self.clock()
        idle = [u for u in self._open.values() if now - u.last_seen > self.idle_seconds]
        for upload in idle:
            log.warning(
                "run %s step %d: upload dropped after %.0f s without a chunk (%d of %d received)",
                upload.begin.run_id,
                upload.begin.step,
                self.idle_seconds,
                len(upload.digests),
                upload.begin.n_chunks,
            )
            self._drop(upload)
        return idle

    def close(self) -> None:
        for upload_id in list(self._open):
            self.refuse(upload_id)
