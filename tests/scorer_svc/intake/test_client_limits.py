"""One client cannot hold another up: what a hello costs is bounded before any sample is
tokenized, and each client (here told apart by source address on loopback) has its own share
of the registrations and uploads in flight. Real ZeroMQ sockets against a real intake."""

import json

import zmq

from common.wire.protocol import encode_checkpoint, encode_hello
from delta_loss_devtools.waiting import wait_until
from tests.support.data import write_samples
from tests.support.scorer import (
    lora_checkpoints,
    make_hello,
    register,
    zmq_request,
    zmq_upload,
)

OTHER_HOST = "127.0.0.2"  # a second client: the same loopback, another source address


def from_host(url: str, host: str) -> str:
    """url connected from the source address host (libzmq's "source;destination" form)."""
    return url.replace("tcp://", f"tcp://{host}:0;", 1)


def test_one_file_listed_under_many_spellings_is_refused_before_tokenizing(
    served, tiny_model, tmp_path
):
    url, _, _, tokenized = served
    data = write_samples(tmp_path / "d.json", 6)
    spellings = [f"{tmp_path}/{'./' * i}d.json" for i in range(16)]
    spellings += [f"{tmp_path}{'/' * i}d.json" for i in range(2, 16)]
    hostile = make_hello(tiny_model, data, run_id="many", dataset=",".join(spellings))
    reply = register(url, hostile)
    assert reply["code"] == "mismatch" and "both read" in reply["reason"], reply
    assert "list each dataset once" in reply["reason"]
    # the same file once, but more rows than the trainer declares: counted, not tokenized
    wrong_count = make_hello(tiny_model, data, run_id="count", n_samples=5)
    reply = register(url, wrong_count)
    assert reply["code"] == "mismatch", reply
    assert "the trainer has 5 samples, the scorer reads 6" in reply["reason"]
    assert tokenized == []
    assert register(url, make_hello(tiny_model, data, run_id="fine"))["status"] == "registered"
    assert tokenized == [6]


def test_clients_take_turns_and_one_client_never_holds_every_preparer(served, tiny_model, tmp_path):
    url, release, intake, _ = served
    intake.registrations.per_client = 3
    data = write_samples(tmp_path / "d.json", 6)
    for i in range(3):  # more runs than the preparers a client may hold
        hello = make_hello(tiny_model, data, run_id=f"slow-{i}")
        assert zmq_request(url, encode_hello(hello))["status"] == "registering"
    beyond = zmq_request(url, encode_hello(make_hello(tiny_model, data, run_id="slow-3")))
    assert beyond["code"] == "busy" and "3 runs being registered already" in beyond["reason"]
    # polling for its own run is not a new registration
    again = zmq_request(url, encode_hello(make_hello(tiny_model, data, run_id="slow-0")))
    assert again["status"] == "registering"
    # another client registers at once while the first one's runs are held
    other = register(from_host(url, OTHER_HOST), make_hello(tiny_model, data, run_id="other"))
    assert other["status"] == "registered" and not release.is_set()
    release.set()
    for i in range(4):
        hello = make_hello(tiny_model, data, run_id=f"slow-{i}")
        assert register(url, hello)["status"] == "registered"


def _partial_upload(url: str, messages: list) -> zmq.Socket:
    """A DEALER that sends an upload's header and first chunk, then nothing: left open."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(url)
    for frames in messages[:2]:
        sock.send_multipart(frames, copy=False)
    return sock


def _replies(socks: list[zmq.Socket], replies: dict[int, dict]) -> dict[int, dict]:
    """replies, with the reply each socket has received since, by position."""
    for i, sock in enumerate(socks):
        if i not in replies and sock.poll(0):
            replies[i] = json.loads(sock.recv_multipart()[0])
    return replies


def test_partial_uploads_of_one_client_leave_room_for_others(served, tiny_model, tmp_path):
    url, _, intake, _ = served
    data = write_samples(tmp_path / "d.json", 6)
    assert register(url, make_hello(tiny_model, data, run_id="run-u"))["status"] == "registered"
    tensors = lora_checkpoints(tiny_model, 1)[0]

    def upload(step: int) -> list:
        return encode_checkpoint(
            run_id="run-u", step=step, update_index=1, kind="lora", tensors=tensors,
            chunk_bytes=1024,
        )  # fmt: skip

    share = intake.uploads.per_client
    held = [_partial_upload(from_host(url, OTHER_HOST), upload(100 + i)) for i in range(60)]
    try:
        # each hostile upload beyond the client's share is answered busy; the rest stay open
        replies: dict[int, dict] = {}
        wait_until(lambda: len(_replies(held, replies)) == 60 - share, "busy replies to the excess")
        assert all(r["code"] == "busy" and "this client is sending" in r["reason"]
                   for r in replies.values())  # fmt: skip
        # another client's upload goes through at its first try
        assert zmq_upload(url, upload(2))["status"] == "queued"
        # the same client's partial uploads, once stale, give up their slots to a new one
        intake.uploads.stale_seconds = 1.0
        mine = [_partial_upload(url, upload(200 + i)) for i in range(share)]
        wait_until(lambda: len(intake.uploads._open) == 2 * share, "the partial uploads open")
        tries = []

        def sent() -> bool:
            tries.append(zmq_upload(url, upload(4)))
            return tries[-1].get("status") == "queued"

        wait_until(sent, "the new upload to find room")
        assert all(r["code"] == "busy" for r in tries[:-1])
        assert _replies(held, replies) and len(replies) == 60 - share  # no other reply owed
        assert sum(u.client == "address 127.0.0.1" for u in intake.uploads._open.values()) < share
        for sock in mine:
            sock.close(0)
    finally:
        for sock in held:
            sock.close(0)
