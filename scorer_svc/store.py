"""Checkpoint tensors on disk, in safetensors (never pickle), written durably before the ack."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def checkpoint_path(data_dir: Path, run_id: str, step: int) -> Path:
    return data_dir / "checkpoints" / run_id / f"step-{step:09d}.safetensors"


def write_checkpoint(path: Path, tensors: dict[str, torch.Tensor]) -> int:
    """Write atomically and fsync, so an acknowledged checkpoint survives a crash."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path.stat().st_size


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))
