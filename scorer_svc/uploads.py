"""Checkpoint uploads in progress: each one's chunks checked and written to its file as they
arrive (common.protocol describes the upload), so the scorer never holds a payload whole.

An upload is open from its `checkpoint` message to its `commit`. An upload id that was refused,
committed or dropped is remembered as closed, and whatever else arrives for it is dropped
without a reply (the trainer had its one reply). Another upload of the same run and step
replaces an open one (the trainer started again); one idle for `idle_seconds` is dropped; at
most `max_open` are open at once.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from common.errors import Busy, IntegrityError, MalformedMessage
from common.protocol import CheckpointHeader, Chunk, CommitHeader, check_chunk, payload_digest
from scorer_svc.store import CheckpointWriter

log = logging.getLogger(__name__)

IDLE_SECONDS = 300.0
MAX_OPEN = 8
CLOSED_REMEMBERED = 4096


@dataclass(eq=False)
class Upload:
    begin: CheckpointHeader
    writer: CheckpointWriter
    last_seen: float
    digests: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return len(self.digests) == self.begin.n_chunks


class Uploads:
    def __init__(
        self,
        *,
        idle_seconds: float = IDLE_SECONDS,
        max_open: int = MAX_OPEN,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.idle_seconds = idle_seconds
        self.max_open = max_open
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

    def open(self, begin: CheckpointHeader, writer: Callable[[], CheckpointWriter]) -> Upload:
        if begin.upload in self._open:  # each attempt of a trainer's has a new id
            raise MalformedMessage(f"upload {begin.upload} is open already: use a new id")
        for other in list(self._open.values()):
            same = (other.begin.run_id, other.begin.step) == (begin.run_id, begin.step)
            if same:
                log.info(
                    "run %s step %d: a new upload replaces the one left unfinished",
                    begin.run_id,
                    begin.step,
                )
                self.refuse(other.begin.upload)
        if len(self._open) >= self.max_open:
            raise Busy(
                f"the scorer is receiving {len(self._open)} checkpoints already; send it again"
            )
        upload = Upload(begin, writer(), self.clock())
        self._open[begin.upload] = upload
        return upload

    def add(self, upload: Upload, chunk: Chunk) -> None:
        """Check the chunk and write it; a bad one raises (the caller refuses the upload)."""
        check_chunk(upload.begin, chunk, len(upload.digests))
        upload.writer.write(chunk.data)
        upload.digests.append(chunk.header.digest)
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
            self.refuse(upload.begin.upload)
        return idle

    def close(self) -> None:
        for upload_id in list(self._open):
            self.refuse(upload_id)
