"""The ZeroMQ ROUTER: registers runs and takes in checkpoints, one reply per hello and one per
upload (common.wire.protocol); each upload's chunks are written as they
arrive (scorer_svc.intake.uploads)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import KW_ONLY, dataclass
from pathlib import Path
from typing import Any

import zmq
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from common.wire.errors import (
    Busy,
    CheckpointRejected,
    ProtocolError,
    RunMismatch,
    ScorerInternalError,
    UnknownRun,
    UploadLost,
)
from common.wire.protocol import (
    CheckpointHeader,
    Chunk,
    CommitHeader,
    Hello,
    ack,
    decode_request,
    error_reply,
    upload_id_of,
)
from scorer_svc.config import Settings
from scorer_svc.intake.registrations import Registrations
from scorer_svc.intake.uploads import Upload, Uploads
from scorer_svc.scoring.registry import Registry
from scorer_svc.scoring.run_data import differences, identity
from scorer_svc.security.tokens import check_request_token, same_token
from scorer_svc.security.zap import secure_server
from scorer_svc.storage import checkpoints as checkpoint_store
from scorer_svc.storage import runs as run_store
from scorer_svc.storage.checkpoint_files import CheckpointWriter, checkpoint_path
from scorer_svc.storage.outages import is_transient, status_of
from scorer_svc.storage.superseding import discard_superseded
from scorer_svc.storage.tables import FAILED, Run

log = logging.getLogger(__name__)

POLL_MS = 200
SWEEP_SECONDS = 10.0  # how often uploads left idle are looked for
# Messages libzmq queues per peer before it stops reading that peer's socket (so the trainer's
# sends wait): at most this many chunks of one upload are held in memory at once.
RECEIVE_QUEUE = 4
# Without a token a peer's frames are read before anything is checked, and libzmq bounds only
# each frame (MAXMSGSIZE), not a multipart message's frame count, nor the connections it
# takes. What a peer that stops part way holds is freed when it is dropped:
# - one that does not finish its handshake in HANDSHAKE_SECONDS (libzmq's default is 30 s),
#   e.g. inside a handshake command that declared a frame of up to max_frame_bytes;
# - one that sends nothing for HEARTBEAT_TIMEOUT_SECONDS after a ping (sent every
#   HEARTBEAT_SECONDS), e.g. in the middle of a multipart message. libzmq peers answer pings
#   by themselves, so an idle trainer stays connected.
SLOW_REQUEST_SECONDS = 1.0  # a request that held the intake longer is not held against uploads
HANDSHAKE_SECONDS = 5
HEARTBEAT_SECONDS = 5
HEARTBEAT_TIMEOUT_SECONDS = 30


class DatabaseUnavailable(Busy):
    """The database did not answer this request: the trainer sends it again (`busy`)."""


@dataclass(eq=False)
class Intake:
    """Handles decoded requests; the socket loop lives in IntakeServer. on_queued is called
    once a checkpoint is stored and acknowledged (it wakes the worker)."""

    settings: Settings
    sessions: sessionmaker[Session]
    registry: Registry
    on_queued: Callable[[], None]
    _: KW_ONLY
    instance: str  # this scorer's name: the runs it registers are its own

    def __post_init__(self) -> None:
        self.token = self.settings.shared_token()
        # Without CURVE the token is the handshake's password, checked before anything is
        # read; with CURVE the handshake checks keys, and each request's header the token.
        self.header_token = self.token if self.settings.curve_secret_key_file else None
        self.registrations = Registrations(self.registry)
        self.uploads = Uploads()
        self.database = status_of(self.sessions)

    def close(self) -> None:
        self.registrations.close()
        self.uploads.close()

    def handle(self, frames: list[Any], client: str = "") -> list[bytes] | None:
        """The reply to a message, or None when it gets none (a chunk, or anything for an
        upload already answered). client: who sent it (IntakeServer.client_of), for the
        per-client limits on registrations and uploads."""
        upload_id = None
        try:
            check_request_token(frames[0] if frames else b"", self.header_token)
            message = decode_request(frames, max_bytes=self.settings.max_checkpoint_bytes)
            if isinstance(message, Hello):
                with self._session("registering a run") as session:
                    return self.hello(session, message, client)
            upload_id = message.header.upload if isinstance(message, Chunk) else message.upload
            if self.uploads.is_closed(upload_id):
                return None
            if isinstance(message, CheckpointHeader):
                with self._session("opening an upload") as session:
                    return self.begin(session, message, client)
            upload = self.uploads.get(upload_id)
            if upload is None:
                raise UploadLost(
                    f"this scorer holds no upload {upload_id} (it restarted, or dropped the "
                    "upload after it stalled): send the checkpoint again"
                )
            if isinstance(message, Chunk):
                self.uploads.add(upload, message)
                return None
            assert isinstance(message, CommitHeader)
            with self._session("storing a checkpoint") as session:
                return self.commit(session, upload, message)
        except ProtocolError as error:
            if not isinstance(error, DatabaseUnavailable):  # logged once a minute, there
                log.warning("refused request: %s: %s", error.code, error)
            return self._refuse(upload_id, error, frames)
        except Exception as error:  # a reply is owed even when the scorer itself fails
            log.exception("request failed inside the scorer")
            return self._refuse(
                upload_id,
                ScorerInternalError(
                    f"the scorer failed on this request: {type(error).__name__}: "
                    f"{error}; see the scorer's log"
                ),
                frames,
            )

    @contextmanager
    def _session(self, what: str) -> Iterator[Session]:
        """A session for one request. The intake never waits out a database outage (it
        answers every trainer from one thread): a transient error is answered `busy`, and the
        trainer sends the request again while the database comes back."""
        with self.sessions() as session:
            try:
                yield session
            except SQLAlchemyError as error:
                if not is_transient(error):
                    raise
                session.rollback()
                trouble = self.database.failed(error, f"{what} (answered busy)")
                raise DatabaseUnavailable(
                    f"the scorer's database is {trouble.kind} for now; send it again shortly"
                ) from error
        self.database.answered()

    def _refuse(
        self, upload_id: str | None, error: ProtocolError, frames: list[Any]
    ) -> list[bytes]:
        if upload_id is None and frames:  # refused before its header was read
            upload_id = upload_id_of(frames[0])
        if upload_id is None:
            return error_reply(error)
        self.uploads.refuse(upload_id)  # its one reply: the rest of it is dropped
        return error_reply(error, upload=upload_id)

    def sweep(self) -> None:
        self.uploads.sweep()

    def hello(self, session: Session, hello: Hello, client: str = "") -> list[bytes]:
        self.registry.access.check_hello(hello)  # before any file is looked at
        run = run_store.get_run(session, run_id=hello.run_id)
        if run is not None:
            self._check_owned(run)
            self._check_same_training_run(run, hello)
            diffs = differences(run.config, hello)
            if diffs:
                raise RunMismatch(
                    f"run {hello.run_id} is already registered with other settings: "
                    + "; ".join(diffs)
                    + ". Use a new run id for a different run."
                )
            resumed = {  # what a resume may change
                "selection_mode": hello.selection_mode,
                "score_budget": hello.score_budget,
                "run_name": hello.run_name,
                "tags": hello.tags,
            }
            run_store.reopen_run(session, run=run, settings=resumed)  # resumed: training again
            status = "already_registered"
        else:
            n_no_labels = self.registrations.poll(hello, client)
            if n_no_labels is None:
                return ack(status="registering", run_id=hello.run_id)
            config = {**hello.model_dump(exclude={"token"}), **identity(hello)}
            run = run_store.create_run(
                session, config=config, n_no_labels=n_no_labels, instance=self.instance
            )
            status = "registered"
            log.info(
                "registered run %s: %d samples, %d without label tokens",
                hello.run_id,
                run.n_samples,
                n_no_labels,
            )
        return ack(
            status=status,
            run_id=run.run_id,
            n_samples=run.n_samples,
            scored_steps=checkpoint_store.scored_steps(session, run=run),
        )

    def _check_owned(self, run: Run) -> None:
        """Another scorer's run stays its own: its checkpoints are on that scorer's disk."""
        if run.instance != self.instance:
            owner = (
                f"the scorer instance {run.instance!r}, which shares this database"
                if run.instance is not None
                else "no scorer yet (a scorer takes such runs when it starts)"
            )
            raise RunMismatch(
                f"run {run.run_id} belongs to {owner} (this one is {self.instance!r}): send "
                "this run's checkpoints to that scorer, or give this run a new run_id"
            )

    @staticmethod
    def _check_same_training_run(run: Run, hello: Hello) -> None:
        """A run id registered by one training run is not taken over by another: its windows
        would come from that run's losses. A resume carries the run's own token."""
        stored = run.config.get("run_token")
        if stored is not None and not same_token(hello.run_token, stored):
            raise RunMismatch(
                f"run {run.run_id} is already registered by another training run (another "
                "output_dir, or one started afresh), and its selections come from that run's "
                "losses: give this run a new run_id, or resume that run from its output_dir "
                "(resume_from_checkpoint)"
            )

    def begin(
        self, session: Session, header: CheckpointHeader, client: str = ""
    ) -> list[bytes] | None:
        """Opens the upload (no reply yet), or answers it at once: a duplicate, a refusal."""
        run = self._run_of(session, header)
        existing = checkpoint_store.get_checkpoint(session, run=run, step=header.step)
        if existing is not None and existing.status != FAILED:
            self.uploads.refuse(header.upload)
            return self._duplicate(run, header, existing.update_index)
        if header.update_index >= 2 and run.initial_step is None:
            raise CheckpointRejected(
                f"run {run.run_id} has no initial checkpoint yet: update 1 must come first"
            )
        manifest = self.registry.models.manifest(
            self.registry.runs.hello_of(run.run_id, run.config)
        )
        manifest.check([(e.name, e.dtype, e.shape) for e in header.tensors])
        path = checkpoint_path(self.settings.data_dir, run.run_id, header.step)
        table = [(e.name, e.dtype, e.shape, e.length) for e in header.tensors]
        self.uploads.open(header, lambda: CheckpointWriter(path, table), client)
        return None

    def commit(self, session: Session, upload: Upload, commit: CommitHeader) -> list[bytes]:
        """Checks every chunk arrived and the digest, then stores: fsync, row, ack."""
        header = upload.begin
        self.uploads.check_commit(upload, commit)
        run = self._run_of(session, header)
        existing = checkpoint_store.get_checkpoint(session, run=run, step=header.step)
        if existing is not None and existing.status != FAILED:  # stored since the upload began
            self.uploads.refuse(header.upload)
            return self._duplicate(run, header, existing.update_index)
        n_bytes = upload.writer.commit()
        self.uploads.finish(upload)
        path = upload.writer.path
        received = checkpoint_store.Received(
            header.step, header.update_index, header.kind, commit.digest, str(path), n_bytes
        )
        try:
            if existing is not None:  # a failed step sent again is scored again
                checkpoint_store.requeue(session, checkpoint=existing, received=received)
            else:
                checkpoint_store.add_checkpoint(session, run=run, received=received)
        except Exception as error:
            session.rollback()
            # A lost connection may have lost only the answer to a stored row: the file
            # stays, for the row or for the trainer's next upload, which is told `duplicate`
            # or writes it again.
            if not (isinstance(error, SQLAlchemyError) and is_transient(error)):
                path.unlink(missing_ok=True)
            raise
        if run.is_async:  # the trainer draws from the newest: older waiting ones go
            try:
                discard_superseded(session, run, keep=self.settings.keep_checkpoints)
            except SQLAlchemyError as error:  # stored all the same; the worker discards them
                session.rollback()
                log.warning("run %s: superseded checkpoints left for later: %s", run.run_id, error)
        log.info(
            "queued run %s step %d (update %d, %d bytes)",
            run.run_id,
            header.step,
            header.update_index,
            n_bytes,
        )
        self.on_queued()
        return ack(
            status="queued",
            run_id=run.run_id,
            step=header.step,
            update_index=header.update_index,
            upload=header.upload,
        )

    def _run_of(self, session: Session, header: CheckpointHeader) -> Run:
        run = run_store.get_run(session, run_id=header.run_id)
        if run is None:
            raise UnknownRun(
                f"no run '{header.run_id}' is registered with this scorer: send hello first"
            )
        self._check_owned(run)
        self._check_fits_run(run, header.kind, header.update_index)
        return run

    @staticmethod
    def _duplicate(run: Run, header: CheckpointHeader, update_index: int) -> list[bytes]:
        return ack(
            status="duplicate",
            run_id=run.run_id,
            step=header.step,
            update_index=update_index,
            upload=header.upload,
        )

    @staticmethod
    def _check_fits_run(run: Run, kind: str, update_index: int) -> None:
        if kind != run.finetuning_type:
            raise CheckpointRejected(
                f"checkpoint kind {kind} does not match run {run.run_id} ({run.finetuning_type})"
            )
        if not 1 <= update_index <= run.update_times:
            raise CheckpointRejected(
                f"update index {update_index} is outside 1..{run.update_times} (update_times "
                f"of run {run.run_id})"
            )


class IntakeServer:
    """Binds the ROUTER at construction (so a busy port fails start) and serves in a thread."""

    def __init__(
        self,
        url: str,
        intake: Intake,
        max_frame_bytes: int,
        *,
        curve_secret_key_file: Path | None = None,
        curve_authorized_keys_dir: Path | None = None,
    ) -> None:
        self.intake = intake
        self.curve = curve_secret_key_file is not None and curve_authorized_keys_dir is not None
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.LINGER, 0)
        # libzmq checks each frame's declared size (handshake commands included) before it
        # allocates it, and drops a peer that declares more.
        self._socket.setsockopt(zmq.MAXMSGSIZE, max_frame_bytes)
        self._socket.setsockopt(zmq.RCVHWM, RECEIVE_QUEUE)
        self._socket.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_SECONDS * 1000)
        self._socket.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_SECONDS * 1000)
        self._socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_SECONDS * 1000)
        self._auth = secure_server(
            self._context,
            self._socket,
            token=intake.token,
            curve_secret_key_file=curve_secret_key_file,
            curve_authorized_keys_dir=curve_authorized_keys_dir,
        )
        try:
            self._socket.bind(url)
        except zmq.ZMQError as exc:
            self._socket.close(0)
            if self._auth is not None:
                self._auth.stop()
            self._context.term()
            raise RuntimeError(f"cannot bind the ZeroMQ socket at {url}: {exc}") from exc
        self.url = url
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="intake", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        if self._thread.is_alive():
            log.error("ZeroMQ intake did not stop in 30 s; leaving its socket to the process exit")
            return
        self.intake.close()  # once its thread is done with the uploads
        self._socket.close(0)
        if self._auth is not None:
            self._auth.stop()
        self._context.term()

    def client_of(self, frames: list[zmq.Frame]) -> str:
        """Who sent a message: its CURVE key where the scorer checks keys (the ZAP handler's
        user id), else its IP address (every process of one host is one client)."""
        if not frames:
            return ""
        try:
            if self.curve:
                return f"key {frames[0].get('User-Id')}"
            return f"address {frames[0].get('Peer-Address')}"
        except zmq.ZMQError:  # no such property (a transport without addresses)
            return ""

    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        swept = time.monotonic()
        while not self._stop.is_set():
            if time.monotonic() - swept > SWEEP_SECONDS:
                self.intake.sweep()
                swept = time.monotonic()
            if not poller.poll(POLL_MS):
                continue
            try:
                frames = self._socket.recv_multipart(copy=False)
                identity, body = frames[0], [f.buffer for f in frames[1:]]
                started = time.monotonic()
                reply = self.intake.handle(body, self.client_of(frames[1:]))
                took = time.monotonic() - started
                if took > SLOW_REQUEST_SECONDS:  # no upload was read meanwhile
                    self.intake.uploads.shift(took)
                if reply is not None:
                    self._socket.send_multipart([identity.bytes, *reply])
            except Exception:  # keep serving: one bad exchange must not stop the intake
                log.exception("ZeroMQ intake error")
