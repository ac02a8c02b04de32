"""3,000 random and mutated uploads and messages at the real scorer: one error reply each,
bounded memory, nothing stored, and a real checkpoint still goes through afterwards."""

import json
import pickle
import random
import time
from pathlib import Path

import httpx
import pytest
import zmq

from common.wire.protocol import PROTOCOL_VERSION, encode_checkpoint
from delta_loss_devtools.scorer_process import ScorerProcess, memory_bytes
from tests.support.data import make_samples
from tests.support.scorer import (
    WritesFile,
    lora_checkpoints,
    make_hello,
    register,
    wait_weights,
    zmq_request,
    zmq_upload,
)
from tests.support.wire import as_bytes

pytestmark = pytest.mark.slow

N_UPLOADS = 3000
DTYPES = ["int32", "bfloat16", "int64", "complex64", "object", "", "float8"]  # tensors are float32


def _rss_kb(pid: int) -> int:
    return memory_bytes(pid) // 1024


def _header(message):
    return json.loads(message[0])


def _with(message, header):
    return [json.dumps(header).encode(), *message[1:]]


def _renamed(upload: list[list[bytes]], upload_id: str) -> list[list[bytes]]:
    """The same upload under another id (a refused upload's id stays closed)."""
    return [_with(m, {**_header(m), "upload": upload_id}) for m in upload]


def mutations(good: list[list[bytes]], rng: random.Random, marker: Path):
    """Yield (name, messages) forever: every kind of bad upload or message the scorer must
    refuse, each with one error reply."""
    tensor_names = [t["name"] for t in _header(good[0])["tensors"]]
    chunks = range(1, len(good) - 1)

    def fresh():
        return _renamed(good, rng.randbytes(16).hex())

    def begin_with(**changes):
        upload = fresh()
        upload[0] = _with(upload[0], {**_header(upload[0]), **changes})
        return upload

    def table_with(field, value):
        upload = fresh()
        h = _header(upload[0])
        h["tensors"][rng.randrange(len(h["tensors"]))][field] = value
        upload[0] = _with(upload[0], h)
        return upload

    def chunk_with(**changes):
        upload = fresh()
        i = rng.choice(chunks)
        upload[i] = _with(upload[i], {**_header(upload[i]), **changes})
        return upload

    def payload(change):
        upload = fresh()
        i = rng.choice(chunks)
        upload[i] = [upload[i][0], change(bytearray(upload[i][1]))]
        return upload

    def flip(buf):
        buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
        return bytes(buf)

    def commit_with(**changes):
        upload = fresh()
        upload[-1] = _with(upload[-1], {**_header(upload[-1]), **changes})
        return upload

    def repeated_chunk():
        upload = fresh()
        i = rng.choice(chunks[:-1])
        return [*upload[: i + 1], upload[i], *upload[i + 1 :]]

    makers = {
        "random_frames": lambda: [
            [rng.randbytes(rng.randrange(0, 300)) for _ in range(rng.randrange(1, 6))]
        ],
        "random_json": lambda: [
            [
                json.dumps(
                    {
                        "protocol": PROTOCOL_VERSION,
                        "type": rng.choice(["hello", "checkpoint", "chunk", "commit", "x", None]),
                    }
                ).encode()
            ]
        ],
        "version": lambda: begin_with(
            protocol=rng.choice([0, 1, 2, PROTOCOL_VERSION - 1, 99, -1, "4", None])
        ),
        "chunk_digest": lambda: chunk_with(digest=rng.randbytes(16).hex()),
        "commit_digest": lambda: commit_with(digest="xxh3-128:" + rng.randbytes(16).hex()),
        "payload_flip": lambda: payload(flip),
        "truncated": lambda: payload(lambda buf: bytes(buf[: rng.randrange(len(buf))])),
        "padded": lambda: payload(lambda buf: bytes(buf) + rng.randbytes(rng.randrange(1, 64))),
        "declared_huge": lambda: begin_with(total_bytes=rng.choice([1 << 40, 1 << 62])),
        "chunk_bytes": lambda: begin_with(chunk_bytes=rng.choice([0, -1, (16 << 20) + 1])),
        "dtype": lambda: table_with("dtype", rng.choice(DTYPES)),
        "shape": lambda: table_with(
            "shape", [rng.randrange(0, 9) for _ in range(rng.randrange(4))]
        ),
        "length": lambda: table_with("length", rng.randrange(0, 1 << 20)),
        "offset": lambda: table_with("offset", rng.choice([1, -1, 99, 2**40])),
        "unknown_run": lambda: begin_with(run_id=f"nobody-{rng.randrange(1000)}"),
        "bad_update": lambda: begin_with(update_index=rng.choice([0, 4, 99])),
        "before_initial": lambda: begin_with(step=rng.randrange(100, 10**6), update_index=2),
        "unknown_tensor": lambda: table_with("name", rng.choice(tensor_names) + ".x"),
        "pickle": lambda: [[pickle.dumps(WritesFile(str(marker)))]],
        "pickle_chunks": lambda: [
            (upload := fresh())[0],
            *[[m[0], pickle.dumps(WritesFile(str(marker)))] for m in upload[1:-1]],
            upload[-1],
        ],
        "missing_chunks": lambda: [(upload := fresh())[0], upload[-1]],
        "repeated_chunk": repeated_chunk,
        "no_begin": lambda: fresh()[1:],
        "extra_frames": lambda: [
            (upload := fresh())[0],
            [*upload[1], rng.randbytes(16)],
            *upload[2:],
        ],
    }
    names = sorted(makers)
    while True:
        name = rng.choice(names)
        yield name, makers[name]()


def test_fuzzed_requests_each_get_an_error_and_store_nothing(tiny_model, tmp_path):
    dataset = tmp_path / "train.json"
    dataset.write_text(json.dumps(make_samples(8)))
    scorer = ScorerProcess(tmp_path / "scorer").start()
    marker = tmp_path / "pwned"
    try:
        hello = make_hello(tiny_model, dataset, run_id="run-f")
        assert register(scorer.zmq_url, hello)["status"] == "registered"
        first, second = lora_checkpoints(tiny_model, 2)
        # Mutations start from a checkpoint the scorer would refuse only for its mutation:
        # update 1 of an unused step; the real update 1 is sent after the fuzzing.
        good = as_bytes(
            encode_checkpoint(
                run_id="run-f", step=2, update_index=1, kind="lora", tensors=first,
                chunk_bytes=4096,
            )
        )  # fmt: skip
        assert len(good) > 4
        rss_before = _rss_kb(scorer.proc.pid)

        context = zmq.Context.instance()
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(scorer.zmq_url)
        codes: dict[str, set] = {}
        rng = random.Random(1234)
        stream = mutations(good, rng, marker)
        started = time.monotonic()
        for _ in range(N_UPLOADS):
            name, messages = next(stream)
            for frames in messages:
                sock.send_multipart(frames)
            assert sock.poll(30_000), f"no reply to a {name} upload"
            reply = sock.recv_multipart()
            assert len(reply) == 1, name
            body = json.loads(reply[0])
            assert body["ok"] is False, (name, body)
            assert body["reason"], name
            codes.setdefault(name, set()).add(body["code"])
        assert not sock.poll(200), "more replies than requests"
        sock.close(0)
        fuzz_seconds = time.monotonic() - started
        rss_after = _rss_kb(scorer.proc.pid)

        assert codes["declared_huge"] == {"too_large"}
        assert codes["version"] == {"version"}
        assert codes["chunk_digest"] == codes["commit_digest"] == {"integrity"}
        assert codes["payload_flip"] == codes["truncated"] == codes["padded"] == {"integrity"}
        assert codes["no_begin"] == {"upload_lost"}
        assert codes["repeated_chunk"] == codes["missing_chunks"] == {"integrity"}
        assert codes["unknown_run"] == {"unknown_run"}
        assert not marker.exists()
        assert rss_after - rss_before < 150_000, (rss_before, rss_after)
        assert httpx.get(f"{scorer.base_url}/v1/runs/run-f/checkpoints").json()["checkpoints"] == []
        assert not list((tmp_path / "scorer" / "checkpoints").rglob("*.*"))  # no file, no half
        assert len(httpx.get(f"{scorer.base_url}/v1/runs").json()["runs"]) == 1

        # A real run still works.
        for step, k, tensors in ((2, 1, first), (4, 2, second)):
            messages = encode_checkpoint(
                run_id="run-f", step=step, update_index=k, kind="lora", tensors=tensors
            )
            assert zmq_upload(scorer.zmq_url, messages)["status"] == "queued"
        assert wait_weights(scorer, "run-f", 4)["update_index"] == 2
        print(
            f"\n{N_UPLOADS} fuzzed uploads in {fuzz_seconds:.1f}s; "
            f"RSS {rss_before} -> {rss_after} kB; codes {codes}"
        )
    finally:
        scorer.stop()


def test_frame_over_the_limit_is_dropped_before_it_is_allocated(tmp_path):
    """libzmq checks a frame's declared size against MAXMSGSIZE before reading it: the peer is
    disconnected (no reply is possible) and the scorer's memory does not grow by the frame."""
    scorer = ScorerProcess(
        tmp_path / "scorer", env={"SCORER_MAX_CHECKPOINT_BYTES": str(1 << 20)}
    ).start()
    try:
        rss_before = _rss_kb(scorer.proc.pid)
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(scorer.zmq_url)
        big = bytes(256 << 20)
        header = json.dumps({"protocol": 2, "type": "checkpoint"}).encode()
        sock.send_multipart([header, big], copy=False)
        assert not sock.poll(3000)  # dropped, not answered
        sock.close(0)
        del big
        assert _rss_kb(scorer.proc.pid) - rss_before < 64_000
        # the scorer still answers others
        hello = json.dumps({"protocol": PROTOCOL_VERSION, "type": "hello"}).encode()
        reply = zmq_request(scorer.zmq_url, [hello])
        assert reply["code"] == "malformed"
    finally:
        scorer.stop()
