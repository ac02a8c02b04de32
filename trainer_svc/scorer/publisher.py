"""Sends the run's hello and its checkpoints to the scorer over a ZeroMQ DEALER socket.

A hello waits for its one reply; a checkpoint is streamed as an upload (common.wire.protocol: its
header, its chunks, each hashed just before it is sent, and its commit) and waits for the
upload's one reply, which may come early (a duplicate, a refusal): the rest is then not sent.
A request without a reply is sent again on a fresh socket ("lazy pirate"), a checkpoint as a
new upload from its start, under the trainer's retry policy (trainer_svc.scorer.retry) until the
configured wait is spent; the scorer answers a repeated hello with `already_registered` and a
repeated checkpoint with `duplicate`. `cancel` (from any thread) ends a checkpoint's sending
within CANCEL_POLL. A new run is prepared by the scorer off its intake: it
answers `registering` at once, and the hello is sent again (0.05 s apart, doubled, at most
2 s) until it is `registered`. The hello's reply wait grows per attempt (2 s, doubled, up to
reply_timeout). An error reply is never retried (but `busy`; and for an upload `upload_lost`,
from a scorer that restarted mid-upload, and `integrity`, chunks lost or damaged in transit,
which a new upload may get through, up to MAX_DAMAGED_UPLOADS times): it raises the
`common.wire.errors` class its code names.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from common.wire.curve import ClientKeys
from common.wire.errors import Busy, IntegrityError, Unauthorized, UploadLost
from common.wire.handshake import REFUSED_EVENTS, refusal_advice, secure_client
from common.wire.protocol import (
    Hello,
    checkpoint_header,
    decode_reply,
    encode_hello,
    payload_table,
    tensor_bytes,
    upload_messages,
)
from trainer_svc.scorer.retry import NotYet, RetryPolicy, StopRequested, never
from trainer_svc.training.snapshot import CheckpointUpload

__all__ = ["CheckpointPublisher", "CheckpointUpload"]

logger = logging.getLogger(__name__)

BYTES_PER_SECOND = 50e6  # allowance per attempt for moving and writing a large checkpoint
HELLO_FIRST_WAIT = 2.0  # seconds the first hello waits for its reply; doubled per attempt
MIN_REPLY_WAIT = 0.1
PREPARING_FIRST_POLL = 0.05  # seconds between hellos while the scorer prepares the run; doubled
PREPARING_MAX_POLL = 2.0
MAX_DAMAGED_UPLOADS = 3  # a checkpoint refused as damaged more often is not sent again
CANCEL_POLL = 0.1  # seconds between looks for a cancel while an upload waits
SEND_QUEUE = 4  # chunks queued in the socket before a send waits (an early reply is then seen)
ADVICE = (
    "that scorer_svc is running, that scorer_zmq_url is its ZeroMQ address (its --zmq-url), "
    "and its log"
)


class CheckpointPublisher:
    def __init__(
        self,
        url: str,
        *,
        wait_seconds: float,
        reply_timeout: float = 30.0,
        token: str | None = None,
        curve: ClientKeys | None = None,
        context: zmq.Context | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        """wait_seconds: how long a request is retried; reply_timeout: the longest a hello
        waits for one reply, and what a checkpoint waits (plus time for its size)."""
        self.url = url
        self.reply_timeout = reply_timeout
        self.token = token
        self.curve = curve
        self.retry = RetryPolicy(wait_seconds, sleep=sleep)
        self._context = context or zmq.Context.instance()
        self._socket: zmq.Socket | None = None
        self._monitor: zmq.Socket | None = None  # the socket's handshake refusals
        self._cancelled = threading.Event()

    def hello(self, hello: Hello, *, stop_requested: Callable[[], bool] = never) -> dict[str, Any]:
        """Registers the run, asking again while the scorer prepares it (`registering`);
        stop_requested ends the wait with ScorerFailure."""

        def reply_wait(attempt: int) -> float:
            return min(HELLO_FIRST_WAIT * 2 ** (attempt - 1), self.reply_timeout)

        what = f"the hello of run {hello.run_id}"
        retry = replace(self.retry, stop_requested=stop_requested)
        frames = encode_hello(hello)
        preparing = itertools.count()

        def attempt(number: int, seconds_left: float) -> dict[str, Any]:
            wait = max(MIN_REPLY_WAIT, min(reply_wait(number), seconds_left))
            try:
                reply = self._send(frames, wait)
            except Busy as exc:
                raise NotYet(str(exc)) from exc
            if reply.get("status") == "registering":
                pause = min(PREPARING_FIRST_POLL * 2 ** next(preparing), PREPARING_MAX_POLL)
                raise NotYet(
                    "the scorer is preparing the run (tokenizing its dataset, building its model)",
                    pause=pause,
                    level=logging.INFO if pause >= PREPARING_MAX_POLL else logging.DEBUG,
                )
            return reply

        reply = retry.run(
            attempt, waiting_for=f"a reply from the scorer at {self.url} to {what}", advice=ADVICE
        )
        logger.info("scorer %s run %s (%s)", reply.get("status"), hello.run_id, self.url)
        return reply

    def send_checkpoint(self, checkpoint: CheckpointUpload) -> dict[str, Any]:
        """Streams the checkpoint (from checkpoint.payload when given, else from a copy of its
        tensors end to end) and returns the upload's reply."""
        payload = checkpoint.payload
        if payload is None:
            payload = memoryview(
                bytearray().join(tensor_bytes(t) for t in checkpoint.tensors.values())
            )
        table = payload_table(checkpoint.tensors)
        size = payload.nbytes
        timeout = self.reply_timeout + size / BYTES_PER_SECOND
        what = f"{checkpoint.describe()}, {size / 1e6:.1f} MB"
        # cancel ends the pause between attempts too
        sleep = self.retry.sleep
        if sleep is time.sleep:
            sleep = self._pause
        retry = replace(self.retry, stop_requested=self._cancelled.is_set, sleep=sleep)

        damaged: list[IntegrityError] = []

        def attempt(number: int, seconds_left: float) -> dict[str, Any]:
            begin = checkpoint_header(
                run_id=checkpoint.run_id,
                step=checkpoint.step,
                update_index=checkpoint.update_index,
                kind=checkpoint.kind,
                table=table,
                token=self.token,
            )  # a new upload id each attempt: the scorer drops what it got of the last one
            wait = max(MIN_REPLY_WAIT, min(timeout, seconds_left))
            messages = upload_messages(begin, payload, token=self.token)
            try:
                return self._upload(begin.upload, messages, wait)
            except IntegrityError as exc:  # damaged on the way: a new upload may go through
                damaged.append(exc)
                if len(damaged) > MAX_DAMAGED_UPLOADS:
                    raise
                raise NotYet(str(exc)) from exc
            except (Busy, UploadLost) as exc:
                raise NotYet(str(exc)) from exc

        try:
            reply = retry.run(
                attempt,
                waiting_for=f"a reply from the scorer at {self.url} to {what}",
                advice=ADVICE,
            )
        finally:
            self._cancelled.clear()  # a cancel ends this send only
        logger.info("scorer %s %s", reply.get("status"), what)
        return reply

    def _pause(self, seconds: float) -> None:
        self._cancelled.wait(seconds)

    def cancel(self) -> None:
        """Ends a send_checkpoint in progress (in another thread) at its next chunk, with
        StopRequested."""
        self._cancelled.set()

    def close(self) -> None:
        if self._socket is not None:
            self._socket.disable_monitor()
            self._socket.close(linger=0)
            self._socket = None
        if self._monitor is not None:
            self._monitor.close(linger=0)
            self._monitor = None

    def _connect(self) -> zmq.Socket:
        if self._socket is None:
            socket = self._context.socket(zmq.DEALER)
            monitor = None
            try:
                socket.setsockopt(zmq.LINGER, 0)
                socket.setsockopt(zmq.SNDHWM, SEND_QUEUE)
                secure_client(socket, token=self.token, curve=self.curve)
                monitor = socket.get_monitor_socket(REFUSED_EVENTS)
                socket.connect(self.url)
            except BaseException:
                if monitor is not None:
                    monitor.close(linger=0)
                socket.close(linger=0)
                raise
            self._socket, self._monitor = socket, monitor
        return self._socket

    def _wait(self, socket: zmq.Socket, event: int, wait_ms: int) -> bool:
        """Whether socket is ready for event within wait_ms; a refused handshake raises
        Unauthorized at once, saying what to set."""
        poller = zmq.Poller()
        poller.register(socket, event)
        assert self._monitor is not None
        poller.register(self._monitor, zmq.POLLIN)
        ready = dict(poller.poll(wait_ms))
        if self._monitor in ready:
            refused = recv_monitor_message(self._monitor)["event"]
            self.close()
            raise Unauthorized(
                f"the scorer at {self.url} refused the connection in its handshake: "
                + refusal_advice(refused, token=self.token, curve=self.curve)
            )
        return socket in ready

    def _upload(self, upload_id: str, messages: Iterable[list[Any]], wait: float) -> dict[str, Any]:
        """Sends the upload's messages, stopping at an early reply; then waits for the reply.
        The whole of it takes at most `wait` seconds; a cancel ends it within CANCEL_POLL."""
        socket = self._connect()
        deadline = time.monotonic() + wait
        try:
            for message in messages:
                early = self._reply_to(socket, upload_id, None)  # answered before the end
                if early is not None:
                    self.close()  # with the chunks it still queues
                    return decode_reply(early)
                if not self._wait_cancellable(socket, zmq.POLLOUT, deadline):
                    raise zmq.Again()
                socket.send_multipart(message, copy=False, flags=zmq.NOBLOCK)
        except zmq.Again:
            self.close()
            raise NotYet(f"could not send within {wait:.1f}s (no connection)") from None
        reply = self._reply_to(socket, upload_id, deadline)
        if reply is None:
            self.close()  # a fresh socket next: a late reply must not be read as the next one's
            raise NotYet(f"no reply within {wait:.1f}s")
        return decode_reply(reply)

    def _reply_to(self, socket: zmq.Socket, upload_id: str, deadline: float | None) -> list | None:
        """The next reply that belongs to this upload (a reply naming another upload, left
        from an earlier one, is dropped), or None by the deadline; deadline None: only a reply
        received already."""
        while (
            self._wait(socket, zmq.POLLIN, 0)
            if deadline is None
            else self._wait_cancellable(socket, zmq.POLLIN, deadline)
        ):
            frames = socket.recv_multipart()
            if _names(frames) in (None, upload_id):
                return frames
            logger.debug("dropped a reply to another upload (%s)", _names(frames))
        return None

    def _wait_cancellable(self, socket: zmq.Socket, event: int, deadline: float) -> bool:
        """_wait until the deadline, in slices that look for a cancel (StopRequested)."""
        while True:
            if self._cancelled.is_set():
                self.close()  # what is queued is dropped; the scorer drops the upload
                raise StopRequested("the checkpoint's sending was cancelled")
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self._wait(socket, event, int(min(left, CANCEL_POLL) * 1000)):
                return True

    def _send(self, frames: list[Any], reply_wait: float) -> dict[str, Any]:
        socket = self._connect()
        wait_ms = int(reply_wait * 1000)
        # A DEALER whose only peer dropped it (a refused CURVE handshake) has nowhere to queue
        # a message, and a plain send would block for ever: wait until it can send, at most
        # as long as for the reply.
        try:
            if not self._wait(socket, zmq.POLLOUT, wait_ms):
                raise zmq.Again()
            socket.send_multipart(frames, copy=False, flags=zmq.NOBLOCK)
        except zmq.Again:
            self.close()
            raise NotYet(f"could not send within {reply_wait:.1f}s (no connection)") from None
        if self._wait(socket, zmq.POLLIN, wait_ms):
            return decode_reply(socket.recv_multipart())
        self.close()  # a fresh socket next: a late reply must not be read as the next one's
        raise NotYet(f"no reply within {reply_wait:.1f}s")


def _names(frames: list) -> str | None:
    """The upload a reply names, if any."""
    try:
        named = json.loads(frames[0]).get("upload") if len(frames) == 1 else None
    except (ValueError, AttributeError):
        return None
    return named if isinstance(named, str) else None
