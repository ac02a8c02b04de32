"""Checkpoint tensors on disk, in safetensors (never pickle), written durably before the ack."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file

from common import dtypes
from common.protocol import Frame

PARTIAL = ".partial"  # a checkpoint file being written


def checkpoint_path(data_dir: Path, run_id: str, step: int) -> Path:
    return data_dir / "checkpoints" / run_id / f"step-{step:09d}.safetensors"


def write_raw_checkpoint(
    path: Path,
    tensors: Sequence[tuple[str, str, list[int], int]],
    payload: Sequence[Frame],
) -> int:
    """Write a safetensors file straight from the received frames: `tensors` lists (name,
    dtype, shape, byte length) in the order their bytes lie end to end in `payload`, which is
    what a safetensors file's data section is. Nothing is rebuilt or copied on the way.
    Written beside, fsynced, renamed into place and its folder fsynced, so an acknowledged
    checkpoint survives a crash."""
    header: dict[str, dict] = {}
    offset = 0
    for name, dtype, shape, length in tensors:
        header[name] = {
            "dtype": dtypes.BY_NAME[dtype].safetensors,
            "shape": list(shape),
            "data_offsets": [offset, offset + length],
        }
        offset += length
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(PARTIAL)
    with open(tmp, "wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)))
        handle.write(encoded)
        for frame in payload:
            handle.write(frame)
        if handle.tell() != 8 + len(encoded) + offset:
            raise ValueError("the payload does not hold the bytes its tensors declare")
        handle.flush()
        os.fsync(handle.fileno())
    _publish(tmp, path)
    return path.stat().st_size


def remove_partial_files(data_dir: Path) -> list[Path]:
    """Checkpoint files whose writing a crash cut off (never acknowledged): removed at start."""
    found = sorted((data_dir / "checkpoints").glob(f"*/*{PARTIAL}"))
    for path in found:
        path.unlink(missing_ok=True)
    return found


def _publish(tmp: Path, path: Path) -> None:
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))
