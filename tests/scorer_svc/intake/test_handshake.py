"""With a token, the scorer authenticates ZeroMQ peers in the handshake (PLAIN), before it reads
a byte of their messages, and serves REST over HTTPS: a real scorer process, a real trainer
run over both, and peers without the token that cost the scorer no memory."""

import socket
import struct

import pytest
import trustme
import zmq
from zmq.utils.monitor import recv_monitor_message

from common.wire.errors import Unauthorized
from common.wire.protocol import FRAME_BYTES, PROTOCOL_VERSION
from delta_loss_devtools.demo_data import write_dataset
from delta_loss_devtools.scorer_process import ScorerProcess, Tls, memory_bytes
from tests.support.scorer import make_hello, settled_checkpoints
from tests.support.trainer import run_trainer
from trainer_svc.scorer.publisher import CheckpointPublisher
from trainer_svc.scorer.weights import UntrustedCertificate, WeightsClient

pytestmark = pytest.mark.slow

TOKEN = "the-shared-token"
FLOOD = 4  # messages of 512 MiB each, as FRAME_BYTES frames of one shared buffer


@pytest.fixture(scope="module")
def tls(tmp_path_factory) -> Tls:
    """A self-signed CA and a certificate it signed for the loopback address."""
    folder = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    files = Tls(folder / "scorer.pem", folder / "scorer.key", folder / "ca.pem")
    cert.cert_chain_pems[0].write_to_path(str(files.certfile))
    cert.private_key_pem.write_to_path(str(files.keyfile))
    ca.cert_pem.write_to_path(str(files.ca_file))
    return files


def _flood_without_the_token(url: str, password: bytes | None) -> None:
    """FLOOD messages of 512 MiB from a peer with a wrong token (or none), until its handshake
    is refused."""
    context = zmq.Context.instance()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    if password is not None:
        dealer.plain_username, dealer.plain_password = b"trainer", password
    monitor = dealer.get_monitor_socket(
        zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    )
    dealer.connect(url)
    chunk = bytes(FRAME_BYTES)
    header = b'{"protocol": %d, "type": "checkpoint"}' % PROTOCOL_VERSION
    message = [header, *[chunk] * ((512 << 20) // FRAME_BYTES)]
    for _ in range(FLOOD):
        try:
            dealer.send_multipart(message, copy=False, flags=zmq.NOBLOCK)
        except zmq.Again:  # refused already: libzmq has no peer left to queue it for
            break
    assert monitor.poll(120_000), "the scorer neither refused nor answered"
    assert recv_monitor_message(monitor)["event"] & (
        zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    )
    assert not dealer.poll(0), "a peer without the token got a reply"
    dealer.disable_monitor()
    monitor.close(0)
    dealer.close(0)


def _declare_a_huge_handshake_command(url: str) -> None:
    """A raw TCP peer: the PLAIN greeting, then a command frame declaring 256 MiB."""
    host, port = url.removeprefix("tcp://").rsplit(":", 1)
    with socket.create_connection((host, int(port))) as raw:
        greeting = b"\xff" + bytes(8) + b"\x7f" + bytes([3, 0]) + b"PLAIN".ljust(20, b"\0")
        raw.sendall(greeting + bytes(32))
        raw.sendall(b"\x06" + struct.pack(">Q", 256 << 20))
        try:
            while raw.send(bytes(1 << 20)):  # until the scorer hangs up
                pass
        except OSError:
            return


def test_the_token_is_checked_in_the_handshake_and_rest_is_served_over_https(
    tiny_model, tmp_path, tls
):
    scorer = ScorerProcess(tmp_path / "scorer", env={"SCORER_TOKEN": TOKEN}, tls=tls).start()
    try:
        before = memory_bytes(scorer.proc.pid, "VmHWM")  # the peak: a freed buffer shows
        for password in (b"not-the-token", None):
            _flood_without_the_token(scorer.zmq_url, password)
        _declare_a_huge_handshake_command(scorer.zmq_url)
        growth_mb = (memory_bytes(scorer.proc.pid, "VmHWM") - before) / 2**20
        print(f"\npeak RSS growth, {2 * FLOOD} x 512 MiB without the token: {growth_mb:.0f} MB")
        assert growth_mb < 64  # read nothing: a frame is at most 16 MiB, and none was taken
        assert "refused a ZeroMQ peer in the handshake: wrong token" in scorer.log()
        assert "refused request" not in scorer.log()  # nothing got as far as the intake

        data = write_dataset(tmp_path / "probe.json", n=8, seed=1)
        hello = make_hello(tiny_model, data, run_id="probe")
        wrong = CheckpointPublisher(
            scorer.zmq_url, wait_seconds=600, reply_timeout=600, token="wrong"
        )
        with pytest.raises(Unauthorized, match="refused this trainer's token"):
            wrong.hello(hello)  # at once, not after the wait
        right = CheckpointPublisher(scorer.zmq_url, wait_seconds=120, token=TOKEN)
        assert right.hello(hello)["status"] == "registered"
        right.close()

        untrusting = WeightsClient(scorer.base_url, "probe", wait_seconds=600, token=TOKEN)
        with pytest.raises(UntrustedCertificate, match="set scorer_ca_file"):
            untrusting.latest()
        trusting = WeightsClient(
            scorer.base_url, "probe", wait_seconds=120, token=TOKEN, ca_file=str(tls.ca_file)
        )
        assert trusting.latest() is None  # registered, nothing scored yet

        # A whole run: hello and checkpoints over PLAIN, weights over HTTPS.
        out, run_id = run_trainer(
            tiny_model, scorer, tmp_path, "sync",
            scorer_token=TOKEN, scorer_ca_file=str(tls.ca_file),
        )  # fmt: skip
        rows = settled_checkpoints(scorer, run_id, 3)
        assert [r["status"] for r in rows] == ["scored"] * 3
        assert (out / "selections.jsonl").is_file()
    finally:
        scorer.stop()
