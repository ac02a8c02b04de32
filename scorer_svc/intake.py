"""The ZeroMQ ROUTER: registers runs and takes in checkpoints, one reply per request."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
from sqlalchemy.orm import Session, sessionmaker

from common.errors import (
    CheckpointRejected,
    ProtocolError,
    RunMismatch,
    ScorerInternalError,
    UnknownRun,
)
from common.protocol import (
    CheckpointMessage,
    Hello,
    ack,
    decode_request,
    error_reply,
)
from scorer_svc import crud
from scorer_svc.auth import check_request_token
from scorer_svc.config import Settings
from scorer_svc.models import FAILED, Run
from scorer_svc.registration import Registrations
from scorer_svc.registry import Registry, differences, identity
from scorer_svc.store import checkpoint_path, write_raw_checkpoint
from scorer_svc.zap import secure_server

log = logging.getLogger(__name__)

POLL_MS = 200


@dataclass(eq=False)
class Intake:
    """Handles decoded requests; the socket loop lives in IntakeServer. on_queued is called
    once a checkpoint is stored and acknowledged (it wakes the worker)."""

    settings: Settings
    sessions: sessionmaker[Session]
    registry: Registry
    on_queued: Callable[[], None]

    def __post_init__(self) -> None:
        self.token = self.settings.shared_token()
        # Without CURVE the token is the handshake's password, checked before anything is
        # read; with CURVE the handshake checks keys, and each request's header the token.
        self.header_token = self.token if self.settings.curve_secret_key_file else None
        self.registrations = Registrations(self.registry)

    def close(self) -> None:
        self.registrations.close()

    def handle(self, frames: list[Any]) -> list[bytes]:
        try:
            check_request_token(frames[0] if frames else b"", self.header_token)
            message = decode_request(frames, max_bytes=self.settings.max_checkpoint_bytes)
            with self.sessions() as session:
                if isinstance(message, Hello):
                    return self.hello(session, message)
                return self.checkpoint(session, message)
        except ProtocolError as error:
            log.warning("refused request: %s: %s", error.code, error)
            return error_reply(error)
        except Exception as error:  # a reply is owed even when the scorer itself fails
            log.exception("request failed inside the scorer")
            return error_reply(
                ScorerInternalError(
                    f"the scorer failed on this request: {type(error).__name__}: "
                    f"{error}; see the scorer's log"
                )
            )

    def hello(self, session: Session, hello: Hello) -> list[bytes]:
        self.registry.access.check_hello(hello)  # before any file is looked at
        run = crud.get_run(session, run_id=hello.run_id)
        if run is not None:
            self._check_same_training_run(run, hello)
            diffs = differences(run.config, hello)
            if diffs:
                raise RunMismatch(
                    f"run {hello.run_id} is already registered with other settings: "
                    + "; ".join(diffs)
                    + ". Use a new run id for a different run."
                )
            status = "already_registered"
        else:
            n_no_labels = self.registrations.poll(hello)
            if n_no_labels is None:
                return ack(status="registering", run_id=hello.run_id)
            config = {**hello.model_dump(exclude={"token"}), **identity(hello)}
            run = crud.create_run(session, config=config, n_no_labels=n_no_labels)
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
            scored_steps=crud.scored_steps(session, run=run),
        )

    @staticmethod
    def _check_same_training_run(run: Run, hello: Hello) -> None:
        """A run id registered by one training run is not taken over by another: its windows
        would come from that run's losses. A resume carries the run's own token."""
        stored = run.config.get("run_token")
        if stored is not None and stored != hello.run_token:
            raise RunMismatch(
                f"run {run.run_id} is already registered by another training run (another "
                "output_dir, or one started afresh), and its selections come from that run's "
                "losses: give this run a new run_id, or resume that run from its output_dir "
                "(resume_from_checkpoint)"
            )

    def checkpoint(self, session: Session, message: CheckpointMessage) -> list[bytes]:
        header = message.header
        run = crud.get_run(session, run_id=header.run_id)
        if run is None:
            raise UnknownRun(
                f"no run '{header.run_id}' is registered with this scorer: send hello first"
            )
        self._check_fits_run(run, header.kind, header.update_index)
        existing = crud.get_checkpoint(session, run=run, step=header.step)
        if existing is not None and existing.status != FAILED:
            if existing.sha256 != header.sha256:
                log.warning(
                    "run %s step %d sent again with other content; the first one is kept",
                    run.run_id, header.step,
                )  # fmt: skip
            return ack(
                status="duplicate",
                run_id=run.run_id,
                step=header.step,
                update_index=existing.update_index,
                same_content=existing.sha256 == header.sha256,
            )
        if header.update_index >= 2 and run.initial_step is None:
            raise CheckpointRejected(
                f"run {run.run_id} has no initial checkpoint yet: update 1 must come first"
            )
        manifest = self.registry.manifest(self.registry.hello_of(run.run_id, run.config))
        manifest.check([(e.name, e.dtype, e.shape) for e in header.tensors])
        path = checkpoint_path(self.settings.data_dir, run.run_id, header.step)
        table = [(e.name, e.dtype, e.shape, e.length) for e in header.tensors]
        n_bytes = write_raw_checkpoint(path, table, message.frames)
        received = crud.Received(
            header.step, header.update_index, header.kind, header.sha256, str(path), n_bytes
        )
        try:
            if existing is not None:  # a failed step sent again is scored again
                crud.requeue(session, checkpoint=existing, received=received)
            else:
                crud.add_checkpoint(session, run=run, received=received)
        except Exception:
            session.rollback()
            path.unlink(missing_ok=True)
            raise
        log.info(
            "queued run %s step %d (update %d, %d bytes)",
            run.run_id,
            header.step,
            header.update_index,
            n_bytes,
        )
        self.on_queued()
        return ack(
            status="queued", run_id=run.run_id, step=header.step, update_index=header.update_index
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
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.LINGER, 0)
        # libzmq checks each frame's declared size (handshake commands included) before it
        # allocates it, and drops a peer that declares more.
        self._socket.setsockopt(zmq.MAXMSGSIZE, max_frame_bytes)
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
        self.intake.close()
        self._thread.join(timeout=30)
        if self._thread.is_alive():
            log.error("ZeroMQ intake did not stop in 30 s; leaving its socket to the process exit")
            return
        self._socket.close(0)
        if self._auth is not None:
            self._auth.stop()
        self._context.term()

    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(POLL_MS):
                continue
            try:
                frames = self._socket.recv_multipart(copy=False)
                identity, body = frames[0], [f.buffer for f in frames[1:]]
                reply = self.intake.handle(body)
                self._socket.send_multipart([identity.bytes, *reply])
            except Exception:  # keep serving: one bad exchange must not stop the intake
                log.exception("ZeroMQ intake error")
