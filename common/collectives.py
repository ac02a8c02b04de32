"""Small collectives over torch.distributed, without pickle: Python objects travel as UTF-8
JSON bytes in a uint8 tensor. `device` is where the backend moves tensors (the rank's GPU for
NCCL, the CPU for gloo); `group` is the process group (None: the default group)."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


def start_group(device: torch.device, timeout_seconds: float) -> None:
    """Join torchrun's default group, unless joined already: NCCL for a GPU rank (made its
    current device), gloo on the CPU; collectives wait at most timeout_seconds."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout_seconds)
        )


def control_group(timeout_seconds: float) -> dist.ProcessGroup:
    """A gloo group of every rank beside the default one, for small control messages: every
    rank makes it, in the same order as its other groups. A gloo collective fails as soon as
    a peer's connection closes, where an NCCL one waits for the process group's timeout."""
    group = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_seconds))
    assert isinstance(group, dist.ProcessGroup)  # every rank is a member
    return group


def broadcast_json(
    obj: Any, *, device: torch.device, src: int = 0, group: dist.ProcessGroup | None = None
) -> Any:
    """obj from rank src to every rank of group (give None elsewhere); every rank returns it.
    src is a global rank."""
    rank = dist.get_rank()
    data = json.dumps(obj).encode() if rank == src else b""
    size = torch.tensor([len(data)], dtype=torch.int64, device=device)
    dist.broadcast(size, src=src, group=group)
    if rank == src:
        buffer = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device)
    else:
        buffer = torch.empty(int(size.item()), dtype=torch.uint8, device=device)
    dist.broadcast(buffer, src=src, group=group)
    return obj if rank == src else json.loads(bytes(buffer.cpu().numpy()))


def any_rank(flag: bool, *, device: torch.device) -> bool:
    """Whether flag is true on any rank: every rank gets the same answer."""
    value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def gather_json(obj: Any, *, device: torch.device, dst: int = 0) -> list[Any] | None:
    """Every rank's obj, in rank order, on rank dst; None on the others."""
    data = json.dumps(obj).encode()
    size = torch.tensor([len(data)], dtype=torch.int64, device=device)
    sizes = [torch.empty_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    longest = max(int(s.item()) for s in sizes)
    buffer = torch.zeros(longest, dtype=torch.uint8, device=device)
    if data:
        buffer[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device)
    rank = dist.get_rank()
    buffers = [torch.empty_like(buffer) for _ in sizes] if rank == dst else None
    dist.gather(buffer, buffers, dst=dst)
    if buffers is None:
        return None
    return [
        json.loads(bytes(b[: int(n.item())].cpu().numpy()))
        for b, n in zip(buffers, sizes, strict=True)
    ]
