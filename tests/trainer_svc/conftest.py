"""Fixtures for trainer_svc tests: a small demo dataset, a clock that moves only when slept
on, a ZeroMQ ROUTER standing in for the scorer, a hello (the fake scorer for the recipe is
delta_loss_devtools.fake_scorer.FakeScorer)."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import pytest
import zmq

from common.wire.protocol import (
    PROTOCOL_VERSION,
    CheckpointHeader,
    Chunk,
    CommitHeader,
    Hello,
    decode_request,
    decode_tensors,
)
from delta_loss_devtools.demo_data import write_dataset
from tests.support.wire import assemble
from trainer_svc.scorer.retry import RetryPolicy


@pytest.fixture
def demo_file(tmp_path):
    return write_dataset(tmp_path / "demo.json", n=32, seed=1)


class FakeClock:
    """Time that passes only when the code under test sleeps (or `advance` says so)."""

    def __init__(self):
        self.now = 100.0
        self.pauses = []

    def sleep(self, seconds):
        self.pauses.append(seconds)
        self.now += seconds

    def advance(self, seconds):
        self.now += seconds

    def policy(self, wait_seconds, **kw):
        """A retry policy that sleeps and reads the time on this clock."""
        return RetryPolicy(wait_seconds, sleep=self.sleep, clock=lambda: self.now, **kw)


@pytest.fixture
def clock():
    return FakeClock()


@dataclass
class ReceivedCheckpoint:
    """A whole upload, as the router took it in: its header and payload."""

    header: CheckpointHeader
    payload: bytes

    def tensors(self):
        return decode_tensors(self.header, self.payload)


class FakeRouter:
    """Binds a random port; answers each hello, and each upload once committed, with
    reply(request) (a Hello or a ReceivedCheckpoint) or not at all (None)."""

    def __init__(self, reply):
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        port = self.socket.bind_to_random_port("tcp://127.0.0.1")
        self.url = f"tcp://127.0.0.1:{port}"
        self.reply = reply
        self.requests = []
        self.uploads = {}  # id: the messages received so far
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stop.is_set():
            if not self.socket.poll(50):
                continue
            identity, *frames = self.socket.recv_multipart()
            request = decode_request(frames)
            if not isinstance(request, Hello):
                upload = request.header.upload if isinstance(request, Chunk) else request.upload
                self.uploads.setdefault(upload, []).append(frames)
                if not isinstance(request, CommitHeader):
                    continue
                request = ReceivedCheckpoint(*assemble(self.uploads.pop(upload)))
            self.requests.append(request)
            answer = self.reply(request)
            for reply in answer if isinstance(answer, tuple) else [answer]:  # several: a tuple
                if reply is not None:
                    self.socket.send_multipart([identity, *reply])

    def close(self):
        self.stop.set()
        self.thread.join(5)
        self.socket.close(0)
        self.context.term()


@pytest.fixture
def router(request):
    routers = []

    def make(reply):
        routers.append(FakeRouter(reply))
        return routers[-1]

    yield make
    for r in routers:
        r.close()


@pytest.fixture
def tiny_hello():
    return Hello(
        protocol=PROTOCOL_VERSION,
        run_id="run-1",
        base_model="m",
        finetuning_type="full",
        dataset="d.json",
        tokenization={"template": "auto", "cutoff_len": 64},
        window_size=0.2,
        update_times=2,
        n_samples=4,
        fingerprint="0" * 64,
    )
