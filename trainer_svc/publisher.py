"""Sends the run's hello and its checkpoints to the scorer over a ZeroMQ DEALER socket.

Every request waits for its one reply. A request without a reply is sent again on a fresh
socket ("lazy pirate"), with a growing pause, until the configured wait is spent; the scorer
answers a repeated checkpoint with `duplicate`. An error reply is never retried: it raises
the `common.errors` class its code names.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import torch
import zmq

from common.curve import ClientKeys, apply_client_keys
from common.errors import ScorerUnavailable
from common.protocol import Hello, decode_reply, encode_checkpoint, encode_hello

logger = logging.getLogger(__name__)

BYTES_PER_SECOND = 50e6  # allowance per attempt for moving and writing a large checkpoint


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
        self.url = url
        self.wait_seconds = wait_seconds
        self.reply_timeout = reply_timeout
        self.token = token
        self.curve = curve
        self._context = context or zmq.Context.instance()
        self._socket: zmq.Socket | None = None
        self._sleep = sleep

    def hello(self, hello: Hello) -> dict[str, Any]:
        reply = self._request(encode_hello(hello), "hello", self.reply_timeout)
        logger.info("scorer %s run %s (%s)", reply.get("status"), hello.run_id, self.url)
        return reply

    def send_checkpoint(
        self,
        *,
        run_id: str,
        step: int,
        update_index: int,
        kind: str,
        tensors: dict[str, torch.Tensor],
    ) -> dict[str, Any]:
        frames = encode_checkpoint(
            run_id=run_id,
            step=step,
            update_index=update_index,
            kind=kind,
            tensors=tensors,
            token=self.token,
        )
        size = sum(memoryview(f).nbytes for f in frames)
        timeout = self.reply_timeout + size / BYTES_PER_SECOND
        what = f"checkpoint step {step} (update {update_index}, {size / 1e6:.1f} MB)"
        reply = self._request(frames, what, timeout)
        logger.info("scorer %s %s", reply.get("status"), what)
        return reply

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def _connect(self) -> zmq.Socket:
        if self._socket is None:
            self._socket = self._context.socket(zmq.DEALER)
            self._socket.setsockopt(zmq.LINGER, 0)
            if self.curve is not None:
                apply_client_keys(self._socket, self.curve)
            self._socket.connect(self.url)
        return self._socket

    def _request(self, frames: list[Any], what: str, timeout: float) -> dict[str, Any]:
        start = time.monotonic()
        pause = 0.5
        attempt = 0
        while True:
            attempt += 1
            remaining = self.wait_seconds - (time.monotonic() - start)
            socket = self._connect()
            socket.send_multipart(frames, copy=False)
            if socket.poll(max(1, int(min(timeout, max(remaining, 0.001)) * 1000)), zmq.POLLIN):
                return decode_reply(socket.recv_multipart())
            self.close()  # a late reply must not be read as the next request's
            waited = time.monotonic() - start
            if waited >= self.wait_seconds:
                raise ScorerUnavailable(
                    f"no reply from the scorer at {self.url} to {what} after {attempt} "
                    f"attempt(s) over {waited:.0f}s: check that scorer_svc is running, that "
                    "scorer_zmq_url points at its ZeroMQ address, its log (with CURVE: that "
                    "this trainer's public key is among its authorized keys); or raise "
                    "scorer_wait_seconds"
                )
            pause_now = min(pause, self.wait_seconds - waited)
            logger.warning(
                "no reply from the scorer at %s to %s (attempt %d, %.0fs of %.0fs); "
                "retrying in %.1fs",
                self.url,
                what,
                attempt,
                waited,
                self.wait_seconds,
                pause_now,
            )
            self._sleep(pause_now)
            pause = min(pause * 2, 10.0)
