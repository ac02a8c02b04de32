"""Without a token, peers that stop part way are dropped and what they sent is freed: a
handshake left unfinished within HANDSHAKE_SECONDS, a multipart message left unfinished once
the peer stops answering heartbeats. Raw TCP peers speaking ZMTP by hand against a real
scorer; a real DEALER beside them stays connected and answered."""

import json

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from bench.intake_memory import (
    closed_by_scorer,
    half_open_handshake,
    hello_answered,
    unfinished_message,
)
from common.wire.protocol import PROTOCOL_VERSION
from delta_loss_devtools.scorer_process import ScorerProcess, memory_bytes
from scorer_svc.intake.server import HANDSHAKE_SECONDS, HEARTBEAT_SECONDS, HEARTBEAT_TIMEOUT_SECONDS

pytestmark = pytest.mark.slow

MARGIN = 10  # seconds of slack for a busy machine; libzmq's default handshake interval is 30


@pytest.fixture
def scorer(tmp_path):
    process = ScorerProcess(tmp_path / "scorer").start()
    yield process
    process.stop()


def _hello() -> bytes:
    return json.dumps({"protocol": PROTOCOL_VERSION, "type": "hello"}).encode()


def test_half_open_handshakes_are_dropped_within_the_handshake_interval(scorer):
    peers = [half_open_handshake(scorer.zmq_url) for _ in range(4)]  # 16 MiB - 1 byte each
    try:
        for peer in peers:
            closed = closed_by_scorer(peer, timeout=HANDSHAKE_SECONDS + MARGIN)
            assert closed is not None, "a half-open handshake outlived the handshake interval"
    finally:
        for peer in peers:
            peer.close()
    assert hello_answered(scorer.zmq_url)["code"] == "malformed"


def test_a_peer_stalled_inside_a_multipart_message_is_dropped_an_idle_trainer_is_not(scorer):
    context = zmq.Context.instance()
    trainer = context.socket(zmq.DEALER)  # idle through the whole test, as between checkpoints
    trainer.setsockopt(zmq.LINGER, 0)
    monitor = trainer.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    trainer.connect(scorer.zmq_url)
    try:
        trainer.send(_hello())
        assert trainer.poll(30_000)
        assert json.loads(trainer.recv())["code"] == "malformed"

        before = memory_bytes(scorer.proc.pid)
        peer = unfinished_message(scorer.zmq_url, frames=8, size=4 << 20)  # 32 MiB, no end
        try:
            closed = closed_by_scorer(
                peer, timeout=HEARTBEAT_SECONDS + HEARTBEAT_TIMEOUT_SECONDS + MARGIN
            )
        finally:
            peer.close()
        assert closed is not None, "a peer stalled inside a message was never dropped"
        assert memory_bytes(scorer.proc.pid) - before < 64 << 20

        # The idle trainer answered the pings all along: same connection, answered.
        assert not monitor.poll(0), recv_monitor_message(monitor)
        trainer.send(_hello())
        assert trainer.poll(30_000)
        assert json.loads(trainer.recv())["code"] == "malformed"
        assert not monitor.poll(0), "the idle trainer was disconnected"
    finally:
        trainer.disable_monitor()
        monitor.close(0)
        trainer.close(0)
