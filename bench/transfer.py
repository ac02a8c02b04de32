"""Checkpoint hand-off, in one process, through the product's own pieces: the trainer's
`Snapshot.take` (one host copy into the reused buffer) and `CheckpointPublisher.send_checkpoint`
(the upload streamed in chunks, each hashed with xxh3-128 just before it is sent), ZeroMQ
DEALER -> ROUTER over TCP loopback, and the scorer's per-message work: `decode_request`,
`check_chunk` (the chunk's digest), `CheckpointWriter.write` as each chunk arrives, and at the
commit the digest check and one fsync, then the ack. Each stage's busy time is measured where
it runs (the stages overlap: the scorer writes chunk i while chunk i+1 is on the wire and
the trainer hashes chunk i+2), for 1 GiB of float32 tensors and an 8B-shaped LoRA adapter
(r=16, all linear layers). The 8B base model cannot be built here, so no manifest check."""

from __future__ import annotations

import contextlib
import gc
import os
import socket
import tempfile
import threading
import time
from pathlib import Path

import torch
import xxhash
import zmq

from bench.util import free_port, median, rss_bytes
from common.wire.protocol import (
    FRAME_BYTES,
    CheckpointHeader,
    Chunk,
    CommitHeader,
    ack,
    check_chunk,
    chunk_digest,
    decode_request,
    payload_digest,
)
from scorer_svc.intake.server import RECEIVE_QUEUE
from scorer_svc.storage.checkpoint_files import CheckpointWriter
from trainer_svc.scorer.publisher import CheckpointPublisher
from trainer_svc.training.snapshot import CheckpointUpload, Snapshot

GIB = 1 << 30


def full_tensors(total: int = GIB, rows: int = 4096) -> dict[str, torch.Tensor]:
    """total bytes of float32 in tensors of rows x 4096 (fewer rows for a small total)."""
    rows = min(rows, total // 4 // 4096)
    n = total // 4 // (rows * 4096)
    return {f"layer.{i}.weight": torch.randn(rows, 4096) for i in range(n)}


def lora_8b(r: int = 16, layers: int = 32) -> dict[str, torch.Tensor]:
    """Llama-3-8B: 32 layers, hidden 4096, MLP 14336, 8 KV heads of 128."""
    shapes = {"q_proj": (4096, 4096), "k_proj": (4096, 1024), "v_proj": (4096, 1024),
              "o_proj": (4096, 4096), "gate_proj": (4096, 14336), "up_proj": (4096, 14336),
              "down_proj": (14336, 4096)}  # fmt: skip
    out = {}
    for layer in range(layers):
        for name, (fan_in, fan_out) in shapes.items():
            base = f"base_model.model.model.layers.{layer}.{name}"
            out[f"{base}.lora_A.default.weight"] = torch.randn(r, fan_in)
            out[f"{base}.lora_B.default.weight"] = torch.randn(fan_out, r)
    return out


def reset_peak_rss() -> int:
    """Reset this process's VmHWM to its current RSS (Linux clear_refs 5); return the RSS."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    return rss_bytes(os.getpid())


class BenchIntake:
    """The scorer's side of an upload, timed stage by stage, in a thread."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.context = zmq.Context()
        self.router = self.context.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.MAXMSGSIZE, FRAME_BYTES)
        self.router.setsockopt(zmq.RCVHWM, RECEIVE_QUEUE)
        self.url = f"tcp://127.0.0.1:{free_port()}"
        self.router.bind(self.url)
        self.times = {"hash": 0.0, "write": 0.0, "fsync": 0.0, "first_message": 0.0}
        self.thread = threading.Thread(target=self._serve)
        self.thread.start()

    def _serve(self) -> None:
        writer: CheckpointWriter | None = None
        begin: CheckpointHeader | None = None
        digests: list[str] = []
        while True:
            frames = self.router.recv_multipart(copy=False)
            if not self.times["first_message"]:
                self.times["first_message"] = time.perf_counter()
            message = decode_request([f.buffer for f in frames[1:]], max_bytes=64 * GIB)
            if isinstance(message, CheckpointHeader):
                begin, digests = message, []
                table = [(e.name, e.dtype, e.shape, e.length) for e in message.tensors]
                writer = CheckpointWriter(self.data_dir / "step.safetensors", table)
            elif isinstance(message, Chunk):
                assert begin is not None and writer is not None
                t0 = time.perf_counter()
                check_chunk(begin, message, len(digests))
                t1 = time.perf_counter()
                writer.write(message.data)
                self.times["hash"] += t1 - t0
                self.times["write"] += time.perf_counter() - t1
                digests.append(message.header.digest)
            else:
                assert isinstance(message, CommitHeader) and writer is not None
                assert payload_digest(digests) == message.digest
                t0 = time.perf_counter()
                writer.commit()  # flush + one fsync + rename + the folder's fsync
                self.times["fsync"] = time.perf_counter() - t0
                self.router.send_multipart([frames[0].bytes, *ack(status="queued")])
                return

    def close(self) -> None:
        self.thread.join()
        self.router.close(0)
        self.context.term()


def one_transfer(tensors: dict[str, torch.Tensor], data_dir: Path, snapshot: Snapshot) -> dict:
    gc.collect()
    before = reset_peak_rss()
    intake = BenchIntake(data_dir)
    publisher = CheckpointPublisher(intake.url, wait_seconds=600, reply_timeout=600)
    start = time.perf_counter()
    upload = snapshot.take(CheckpointUpload("bench", 1, 1, "full", tensors))
    copied = time.perf_counter()
    publisher.send_checkpoint(upload)
    end = time.perf_counter()
    publisher.close()
    intake.close()
    (data_dir / "step.safetensors").unlink()
    assert upload.payload is not None
    started = time.perf_counter()  # the trainer's hashing, alone (it ran inside the send)
    for i in range(0, upload.payload.nbytes, FRAME_BYTES):
        chunk_digest(upload.payload[i : i + FRAME_BYTES])
    sender_hash = time.perf_counter() - started
    return {
        "snapshot": copied - start,
        "send_ack": end - copied,
        "sender_hash": sender_hash,
        "scorer_hash": intake.times["hash"],
        "write": intake.times["write"],
        "fsync": intake.times["fsync"],
        "extra_rss": rss_bytes(os.getpid(), "VmHWM") - before,
    }


def loopback_rate(size: int) -> float:
    """GB/s of raw TCP over 127.0.0.1 (one sendall, the receiver reading into one buffer)."""
    server = socket.create_server(("127.0.0.1", 0))
    data = memoryview(bytearray(os.urandom(1 << 20)) * (size >> 20))
    sink = bytearray(1 << 22)

    def receive() -> None:
        conn, _ = server.accept()
        got = 0
        while got < size:
            n = conn.recv_into(sink)
            if not n:
                break
            got += n
        conn.close()

    thread = threading.Thread(target=receive)
    thread.start()
    client = socket.create_connection(server.getsockname())
    start = time.perf_counter()
    client.sendall(data)
    thread.join()
    seconds = time.perf_counter() - start
    client.close()
    server.close()
    return size / seconds / 1e9


def machine_limits(size: int = GIB) -> dict:
    """What this machine allows, GB/s: xxh3-128 on one core, one copy into a reused buffer
    and into fresh memory, TCP over loopback (the disk: disk_rate, beside each transfer)."""
    data = torch.randint(0, 255, (size,), dtype=torch.uint8)
    view = memoryview(data.numpy())  # type: ignore[arg-type]
    start = time.perf_counter()
    xxhash.xxh3_128_hexdigest(view)
    xxh3 = size / (time.perf_counter() - start) / 1e9
    target = torch.empty_like(data)
    target.copy_(data)  # fault its pages in: the snapshot buffer is reused between updates
    start = time.perf_counter()
    target.copy_(data)
    reused = size / (time.perf_counter() - start) / 1e9
    del target
    start = time.perf_counter()
    fresh = bytearray(view)
    fresh_copy = size / (time.perf_counter() - start) / 1e9
    del fresh
    return {
        "xxh3": xxh3,
        "copy_reused": reused,
        "copy_fresh": fresh_copy,
        "loopback": loopback_rate(size),
    }


def disk_rate(folder: Path, payload: memoryview) -> float:
    """GB/s of writing payload to a file in folder in FRAME_BYTES pieces, then one fsync: what
    the disk allows for the scorer's pattern, measured before each transfer (a shared disk's
    speed varies from one second to the next: the best of them is taken as its limit)."""
    path = folder / "disk-probe.bin"
    start = time.perf_counter()
    with open(path, "wb") as handle:
        for i in range(0, payload.nbytes, FRAME_BYTES):
            handle.write(payload[i : i + FRAME_BYTES])
        handle.flush()
        os.fsync(handle.fileno())
    seconds = time.perf_counter() - start
    path.unlink()
    return payload.nbytes / seconds / 1e9


def measure(
    work: Path, repeats: int = 3, *, full_bytes: int = GIB, lora_layers: int = 32, toy: bool = False
) -> dict:
    """full_bytes: the full payload's size (and the machine's limits' probe's); lora_layers:
    the adapter's; toy: 32 MiB and 2 layers, once."""
    if toy:
        return measure(work, repeats=1, full_bytes=32 << 20, lora_layers=2)
    if hasattr(os, "sched_setaffinity"):  # sender and receiver: one core each, as in a run
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    out: dict = {"limits": machine_limits(full_bytes)}
    loopback = out["limits"]["loopback"]
    payloads = {
        "full_1gib": lambda: full_tensors(full_bytes),
        "lora_8b_r16": lambda: lora_8b(layers=lora_layers),
    }
    for name, make in payloads.items():
        tensors = make()
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        snapshot = Snapshot()  # reused between repeats, as between updates
        runs = []
        with tempfile.TemporaryDirectory(dir=work) as tmp:
            for _ in range(repeats):
                probe = snapshot.take(CheckpointUpload("bench", 0, 1, "full", tensors)).payload
                assert probe is not None
                disk = disk_rate(Path(tmp), probe)
                run = one_transfer(tensors, Path(tmp), snapshot)
                run["gb_per_s"] = size / run["send_ack"] / 1e9
                run["disk_fsync"] = disk
                runs.append(run)
        row = {k: median([r[k] for r in runs]) for k in runs[0]}
        # What the disk allows: the best it did for the same writes in this run.
        row["disk_best"] = max(r["disk_fsync"] for r in runs)
        row["bound"] = min(row["disk_best"], loopback)
        row["ratio"] = row["gb_per_s"] / row["bound"]
        row["bytes"] = size
        row["tensors"] = len(tensors)
        row["copies"] = row["extra_rss"] / size
        out[name] = row
        del tensors, snapshot
    out["bound"] = out["full_1gib"]["bound"]  # the slower of the disk and the loopback
    out["ratio"] = out["full_1gib"]["ratio"]
    return out


if __name__ == "__main__":
    import json

    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(measure(Path(tmp), repeats=1), indent=1))
