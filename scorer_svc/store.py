"""Checkpoint tensors on disk, in safetensors (never pickle), written durably before the ack."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Sequence
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
    _publish(tmp, path)
    return path.stat().st_size


# safetensors' names for the dtypes the protocol carries
SAFETENSORS_DTYPES = {
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "float64": "F64",
    "int64": "I64",
    "int32": "I32",
    "uint8": "U8",
    "bool": "BOOL",
}


def write_raw_checkpoint(
    path: Path, tensors: Sequence[tuple[str, str, list[int], memoryview]]
) -> int:
    """Write (name, dtype, shape, bytes) as a safetensors file straight from the received
    frames: no tensor is rebuilt or copied on the way. Atomic and fsynced like
    write_checkpoint."""
    header: dict[str, dict] = {}
    offset = 0
    for name, dtype, shape, data in tensors:
        header[name] = {
            "dtype": SAFETENSORS_DTYPES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + data.nbytes],
        }
        offset += data.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial")
    with open(tmp, "wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)))
        handle.write(encoded)
        for _, _, _, data in tensors:
            handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    _publish(tmp, path)
    return path.stat().st_size


def _publish(tmp: Path, path: Path) -> None:
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))
