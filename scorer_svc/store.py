"""Checkpoint tensors on disk, in safetensors (never pickle), written durably before the ack."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import torch
from safetensors.torch import load_file

from common.protocol import Frame
from common.safetensors_file import TensorLayout, safetensors_prefix

PARTIAL = ".partial"  # a checkpoint file being written


def checkpoint_path(data_dir: Path, run_id: str, step: int) -> Path:
    return data_dir / "checkpoints" / run_id / f"step-{step:09d}.safetensors"


class CheckpointWriter:
    """A safetensors file written as its payload arrives: the header first (from the tensor
    table: name, dtype, shape, byte length, in the order their bytes lie end to end, which is
    what a safetensors data section is), then each chunk as it comes, nothing rebuilt or held.
    Written beside the final path; `commit` fsyncs once, renames into place and fsyncs the
    folder, so an acknowledged checkpoint survives a crash; `abort` removes it."""

    def __init__(self, path: Path, tensors: Sequence[TensorLayout]):
        prefix = safetensors_prefix(tensors)
        self.path = path
        self.payload_bytes = sum(length for *_, length in tensors)
        self.written = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = path.with_suffix(PARTIAL)
        self._handle: BinaryIO | None = open(self._tmp, "wb")  # noqa: SIM115 (closed by commit/abort)
        try:
            self._handle.write(prefix)
        except BaseException:
            self.abort()
            raise

    def write(self, data: Frame) -> None:
        assert self._handle is not None, "the checkpoint file is already closed"
        size = memoryview(data).nbytes
        if self.written + size > self.payload_bytes:
            raise ValueError("more bytes than the checkpoint's tensors declare")
        self._handle.write(data)
        self.written += size

    def commit(self) -> int:
        """fsync, rename into place; the file's size."""
        assert self._handle is not None, "the checkpoint file is already closed"
        if self.written != self.payload_bytes:
            raise ValueError(
                f"{self.written} payload bytes written; the tensors declare {self.payload_bytes}"
            )
        handle, self._handle = self._handle, None
        try:
            handle.flush()
            os.fsync(handle.fileno())
        finally:
            handle.close()
        _publish(self._tmp, self.path)
        return self.path.stat().st_size

    def abort(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        self._tmp.unlink(missing_ok=True)


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
