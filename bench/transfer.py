"""Checkpoint transfer, in one process: the trainer's encode (sha256), ZeroMQ
DEALER -> ROUTER over TCP loopback, the scorer's decode + verify (sha256), persist
(safetensors + fsync) and the ack back; each stage timed, for 1 GiB of float32 tensors and
for an 8B-shaped LoRA adapter (r=16, all linear layers). The scorer's intake functions are
the real ones (`decode_request`, `write_raw_checkpoint`: the received frames go to the
file without being rebuilt as tensors); the 8B base model's
tensors cannot be built here, so no scorer process checks them against a model manifest."""

from __future__ import annotations

import contextlib
import gc
import hashlib
import os
import tempfile
import threading
import time
from pathlib import Path

import torch
import zmq

from bench.util import free_port, median, rss_bytes
from common.protocol import Hello, decode_request, encode_checkpoint
from scorer_svc.store import write_raw_checkpoint

GIB = 1 << 30


def full_tensors(total: int = GIB, rows: int = 4096) -> dict[str, torch.Tensor]:
    n = total // 4 // (rows * 4096)
    return {f"layer.{i}.weight": torch.randn(rows, 4096) for i in range(n)}


def lora_8b(r: int = 16) -> dict[str, torch.Tensor]:
    """Llama-3-8B: 32 layers, hidden 4096, MLP 14336, 8 KV heads of 128."""
    shapes = {"q_proj": (4096, 4096), "k_proj": (4096, 1024), "v_proj": (4096, 1024),
              "o_proj": (4096, 4096), "gate_proj": (4096, 14336), "up_proj": (4096, 14336),
              "down_proj": (14336, 4096)}  # fmt: skip
    out = {}
    for layer in range(32):
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


def one_transfer(tensors: dict[str, torch.Tensor], data_dir: Path, step: int) -> dict:
    gc.collect()
    before = reset_peak_rss()
    ctx = zmq.Context()
    url = f"tcp://127.0.0.1:{free_port()}"
    router = ctx.socket(zmq.ROUTER)
    router.bind(url)
    times: dict[str, float] = {}

    def serve() -> None:
        frames = router.recv_multipart(copy=False)
        t0 = time.perf_counter()
        message = decode_request([f.buffer for f in frames[1:]], max_bytes=64 * GIB)
        t1 = time.perf_counter()
        assert not isinstance(message, Hello)
        table = [(e.name, e.dtype, e.shape, e.length) for e in message.header.tensors]
        t2 = time.perf_counter()
        write_raw_checkpoint(data_dir / f"step-{step}.safetensors", table, message.frames)
        t3 = time.perf_counter()
        times.update(received=t0, verify=t1 - t0, decode=t2 - t1, persist=t3 - t2)
        router.send_multipart([frames[0].bytes, b'{"ok": true}'])

    thread = threading.Thread(target=serve)
    thread.start()
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(url)
    start = time.perf_counter()
    frames = encode_checkpoint(
        run_id="bench", step=step, update_index=1, kind="full", tensors=tensors
    )
    encoded = time.perf_counter()
    dealer.send_multipart(frames, copy=False)
    dealer.recv_multipart()
    end = time.perf_counter()
    thread.join()
    dealer.close(0)
    router.close(0)
    ctx.term()
    (data_dir / f"step-{step}.safetensors").unlink()
    return {
        "encode": encoded - start,
        "wire": times["received"] - encoded,
        "verify": times["verify"],
        "decode": times["decode"],
        "persist": times["persist"],
        "total": end - start,
        "extra_rss": rss_bytes(os.getpid(), "VmHWM") - before,
    }


def machine_limits(work: Path, size: int = 256 << 20) -> dict:
    """What one core and this disk allow: sha256, one memory copy, write + fsync (GB/s)."""
    data = os.urandom(size)
    start = time.perf_counter()
    hashlib.sha256(data).hexdigest()
    sha = size / (time.perf_counter() - start) / 1e9
    start = time.perf_counter()
    bytearray(data)
    copy = size / (time.perf_counter() - start) / 1e9
    path = work / "disk-probe.bin"
    start = time.perf_counter()
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    disk = size / (time.perf_counter() - start) / 1e9
    path.unlink()
    return {"sha256": sha, "copy": copy, "disk_fsync": disk}


def measure(work: Path, repeats: int = 3) -> dict:
    if hasattr(os, "sched_setaffinity"):  # sender and receiver: one core each, as in a run
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    out = {}
    for name, make in (("full_1gib", full_tensors), ("lora_8b_r16", lora_8b)):
        tensors = make()
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        with tempfile.TemporaryDirectory(dir=work) as tmp:
            runs = [one_transfer(tensors, Path(tmp), i) for i in range(repeats)]
        row = {k: median([r[k] for r in runs]) for k in runs[0]}
        row["bytes"] = size
        row["tensors"] = len(tensors)
        row["gb_per_s"] = size / row["total"] / 1e9
        row["copies"] = row["extra_rss"] / size
        row["gb_per_s_without_persist"] = size / (row["total"] - row["persist"]) / 1e9
        out[name] = row
        del tensors
    out["limits"] = machine_limits(work)
    return out


if __name__ == "__main__":
    import json

    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(measure(Path(tmp), repeats=1), indent=1))
