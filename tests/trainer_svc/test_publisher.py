"""The checkpoint publisher against a real ZeroMQ ROUTER in a thread."""

import json
import threading

import pytest
import torch
import zmq

from common.errors import RunMismatch, ScorerUnavailable
from common.protocol import ack, decode_request, decode_tensors, error_reply
from trainer_svc.publisher import CheckpointPublisher


class FakeRouter:
    """Binds a random port; answers each request with reply(request) or not at all (None)."""

    def __init__(self, reply):
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        port = self.socket.bind_to_random_port("tcp://127.0.0.1")
        self.url = f"tcp://127.0.0.1:{port}"
        self.reply = reply
        self.requests = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stop.is_set():
            if not self.socket.poll(50):
                continue
            identity, *frames = self.socket.recv_multipart()
            request = decode_request(frames)
            self.requests.append(request)
            answer = self.reply(request)
            if answer is not None:
                self.socket.send_multipart([identity, *answer])

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


def test_checkpoint_arrives_intact_and_is_acked(router):
    server = router(lambda req: ack(status="queued", step=req.header.step))
    pub = CheckpointPublisher(server.url, wait_seconds=10)
    tensors = {"a.weight": torch.randn(3, 4), "b.bias": torch.arange(5, dtype=torch.float32)}
    reply = pub.send_checkpoint(run_id="r", step=7, update_index=2, kind="lora", tensors=tensors)
    pub.close()
    assert reply["status"] == "queued" and reply["step"] == 7
    got = decode_tensors(server.requests[0])
    assert set(got) == set(tensors)
    assert all(torch.equal(got[k], tensors[k]) for k in tensors)


def test_error_reply_raises_its_class_without_retry(router):
    server = router(lambda req: error_reply(RunMismatch("fingerprint differs")))
    pub = CheckpointPublisher(server.url, wait_seconds=10)
    with pytest.raises(RunMismatch, match="fingerprint differs"):
        pub.send_checkpoint(
            run_id="r", step=1, update_index=1, kind="lora", tensors={"x": torch.zeros(2)}
        )
    pub.close()
    assert len(server.requests) == 1


def test_silent_scorer_is_retried_then_reported(router):
    server = router(lambda req: None)
    pauses = []
    pub = CheckpointPublisher(server.url, wait_seconds=0.6, reply_timeout=0.2, sleep=pauses.append)
    with pytest.raises(ScorerUnavailable, match="scorer_zmq_url"):
        pub.send_checkpoint(
            run_id="r", step=1, update_index=1, kind="lora", tensors={"x": torch.zeros(2)}
        )
    pub.close()
    assert len(server.requests) >= 2 and pauses  # resent on a fresh socket after each pause


def test_a_late_scorer_is_reached_on_retry(router):
    calls = []

    def reply(req):
        calls.append(req)
        return ack(status="duplicate") if len(calls) > 1 else None

    server = router(reply)
    pub = CheckpointPublisher(server.url, wait_seconds=10, reply_timeout=0.3, sleep=lambda s: None)
    reply_ = pub.send_checkpoint(
        run_id="r", step=1, update_index=1, kind="lora", tensors={"x": torch.zeros(2)}
    )
    pub.close()
    assert reply_["status"] == "duplicate" and len(server.requests) == 2


def test_hello_sends_one_json_frame(router, tiny_hello):
    server = router(lambda req: ack(status="registered", run_id=req.run_id))
    pub = CheckpointPublisher(server.url, wait_seconds=10)
    assert pub.hello(tiny_hello)["status"] == "registered"
    pub.close()
    assert json.loads(server.requests[0].model_dump_json())["run_id"] == "run-1"


@pytest.fixture
def tiny_hello():
    from common.protocol import PROTOCOL_VERSION, Hello

    return Hello(
        protocol=PROTOCOL_VERSION,
        run_id="run-1",
        base_model="m",
        finetuning_type="full",
        dataset="d.json",
        tokenization={},
        window_size=0.2,
        update_times=2,
        n_samples=4,
        fingerprint="0" * 64,
    )
