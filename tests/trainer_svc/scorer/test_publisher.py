"""The checkpoint publisher against a real ZeroMQ ROUTER in a thread (conftest's router)."""

import json
import logging
import threading

import pytest
import torch

from common.wire import errors
from common.wire.errors import RunMismatch, ScorerUnavailable
from common.wire.protocol import ack, error_reply
from delta_loss_devtools.waiting import wait_until
from trainer_svc.scorer.publisher import CheckpointPublisher, CheckpointUpload
from trainer_svc.scorer.retry import NotYet, ScorerFailure


def test_checkpoint_arrives_intact_and_is_acked(router):
    server = router(lambda req: ack(status="queued", step=req.header.step))
    pub = CheckpointPublisher(server.url, wait_seconds=10)
    tensors = {"a.weight": torch.randn(3, 4), "b.bias": torch.arange(5, dtype=torch.float32)}
    reply = pub.send_checkpoint(CheckpointUpload("r", 7, 2, "lora", tensors))
    pub.close()
    assert reply["status"] == "queued" and reply["step"] == 7
    got = server.requests[0].tensors()
    assert set(got) == set(tensors)
    assert all(torch.equal(got[k], tensors[k]) for k in tensors)


def test_error_reply_raises_its_class_without_retry(router):
    server = router(lambda req: error_reply(RunMismatch("fingerprint differs")))
    pub = CheckpointPublisher(server.url, wait_seconds=10)
    with pytest.raises(RunMismatch, match="fingerprint differs"):
        pub.send_checkpoint(CheckpointUpload("r", 1, 1, "lora", {"x": torch.zeros(2)}))
    pub.close()
    assert len(server.requests) == 1


def test_silent_scorer_is_retried_then_reported(router):
    server = router(lambda req: None)
    pauses = []
    pub = CheckpointPublisher(server.url, wait_seconds=0.6, reply_timeout=0.2, sleep=pauses.append)
    with pytest.raises(ScorerUnavailable, match="scorer_zmq_url"):
        pub.send_checkpoint(CheckpointUpload("r", 1, 1, "lora", {"x": torch.zeros(2)}))
    pub.close()
    assert len(server.requests) >= 2 and pauses  # resent on a fresh socket after each pause


def test_a_late_scorer_is_reached_on_retry(router):
    calls = []

    def reply(req):
        calls.append(req)
        return ack(status="duplicate") if len(calls) > 1 else None

    server = router(reply)
    pub = CheckpointPublisher(server.url, wait_seconds=10, reply_timeout=0.3, sleep=lambda s: None)
    reply_ = pub.send_checkpoint(CheckpointUpload("r", 1, 1, "lora", {"x": torch.zeros(2)}))
    pub.close()
    assert reply_["status"] == "duplicate" and len(server.requests) == 2


def test_hello_sends_one_json_frame(router, tiny_hello):
    server = router(lambda req: ack(status="registered", run_id=req.run_id))
    pub = CheckpointPublisher(server.url, wait_seconds=10)
    assert pub.hello(tiny_hello)["status"] == "registered"
    pub.close()
    assert json.loads(server.requests[0].model_dump_json())["run_id"] == "run-1"


def test_hello_waits_longer_for_each_reply_up_to_reply_timeout(tiny_hello, clock):
    pub = CheckpointPublisher("tcp://127.0.0.1:9", wait_seconds=100, reply_timeout=30)
    pub.retry = clock.policy(100)
    waits = []

    def silent(frames, reply_wait):  # a scorer that never answers, on the fake clock
        waits.append(reply_wait)
        clock.advance(reply_wait)
        raise NotYet(f"no reply within {reply_wait:.1f}s")

    pub._send = silent
    with pytest.raises(ScorerUnavailable, match="to the hello of run run-1 after 6 attempt"):
        pub.hello(tiny_hello)
    # 2 s doubled up to 30 s; the last is what the 100 s leave after the pauses
    assert waits == [2, 4, 8, 16, 30, 24.5]
    assert clock.pauses == [0.5, 1.0, 2.0, 4.0, 8.0]


def test_a_stop_request_ends_the_hello_wait_after_the_attempt(router, tiny_hello):
    server = router(lambda req: None)
    pub = CheckpointPublisher(
        server.url, wait_seconds=60, reply_timeout=0.2, sleep=lambda s: pytest.fail("paused")
    )
    with pytest.raises(ScorerFailure, match=f"SIGTERM while waiting for a reply .* {server.url}"):
        pub.hello(tiny_hello, stop_requested=lambda: True)
    pub.close()
    assert len(server.requests) <= 1  # one attempt (it may not have arrived when it gave up)


def test_hello_is_asked_again_while_the_scorer_prepares_the_run(router, tiny_hello, caplog):
    statuses = iter(["registering", "registering", "registering", "registered"])
    server = router(lambda req: ack(status=next(statuses), run_id=req.run_id))
    pub = CheckpointPublisher(server.url, wait_seconds=60)
    with caplog.at_level(logging.INFO, logger="trainer_svc"):
        assert pub.hello(tiny_hello)["status"] == "registered"
    pub.close()
    assert len(server.requests) == 4
    # An answer "preparing" is not a missing scorer: nothing is logged as a retry warning.
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_busy_scorer_is_asked_again(router, tiny_hello):
    replies = iter([error_reply(errors.Busy("32 runs are being registered")), None])

    def answer(req):
        reply = next(replies)
        return reply if reply is not None else ack(status="registered", run_id=req.run_id)

    server = router(answer)
    pub = CheckpointPublisher(server.url, wait_seconds=60)
    assert pub.hello(tiny_hello)["status"] == "registered"
    pub.close()
    assert len(server.requests) == 2


def test_a_reply_left_from_another_upload_is_not_taken_for_this_ones(router):
    def answer(req):
        stale = ack(status="queued", step=99, upload="f" * 32)
        return stale, ack(status="queued", step=req.header.step, upload=req.header.upload)

    server = router(answer)
    pub = CheckpointPublisher(server.url, wait_seconds=10)
    reply = pub.send_checkpoint(CheckpointUpload("r", 7, 2, "lora", {"x": torch.zeros(2)}))
    pub.close()
    assert reply["step"] == 7


def test_corruption_in_transit_is_sent_again_as_a_new_upload(router):
    answers = iter([error_reply(errors.IntegrityError("chunk 0 corrupted in transit")), None])

    def answer(req):
        reply = next(answers)
        return reply or ack(status="queued", step=req.header.step, upload=req.header.upload)

    server = router(answer)
    pub = CheckpointPublisher(server.url, wait_seconds=60, sleep=lambda s: None)
    assert (
        pub.send_checkpoint(CheckpointUpload("r", 3, 1, "lora", {"x": torch.ones(4)}))["status"]
        == "queued"
    )
    pub.close()
    uploads = [r.header.upload for r in server.requests]
    assert len(uploads) == 2 and uploads[0] != uploads[1]


def test_cancel_ends_a_send_that_waits_for_its_reply(router):
    server = router(lambda req: None)  # never answers
    pub = CheckpointPublisher(server.url, wait_seconds=3600, reply_timeout=3600)
    errors_seen = []

    def send():
        try:
            pub.send_checkpoint(CheckpointUpload("r", 1, 1, "lora", {"x": torch.zeros(2)}))
        except ScorerFailure as exc:  # StopRequested
            errors_seen.append(exc)

    thread = threading.Thread(target=send)
    thread.start()
    wait_until(lambda: server.requests, "the upload at the router")
    pub.cancel()
    thread.join(60)
    assert not thread.is_alive() and "cancelled" in str(errors_seen[0])
    pub.close()


def test_a_checkpoint_refused_as_damaged_again_and_again_is_given_up(router):
    server = router(lambda req: error_reply(errors.IntegrityError("chunk 0 corrupted")))
    pub = CheckpointPublisher(server.url, wait_seconds=3600, sleep=lambda s: None)
    with pytest.raises(errors.IntegrityError, match="corrupted"):
        pub.send_checkpoint(CheckpointUpload("r", 3, 1, "lora", {"x": torch.ones(4)}))
    pub.close()
    assert len(server.requests) == 4  # the first upload and three more
