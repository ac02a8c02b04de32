"""Checkpoint tensors on disk, in safetensors (never pickle), written durably before the ack,
and read back one tensor at a time into a model's tensors: beside the model, at most one
tensor of the checkpoint is in memory at once.

Between ranks (`stream_tensors`) every tensor travels through one receive buffer per rank,
made before the stream starts (`receive_buffer`: bytes on the rank's device, as many as the
largest tensor's): each tensor is received into (or, on the reading rank, copied into) the
start of it, so nothing is allocated on the device while the ranks are in the stream's
collectives, and a rank short of memory finds out before they start. In one process
(`StoredCheckpoint.copy_into`) each tensor is read and copied into its target, and the first
failure ends it before anything more is read."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from common import dtypes
from common.wire.protocol import Frame
from common.wire.safetensors_file import TensorLayout, safetensors_prefix

PARTIAL = ".partial"  # a checkpoint file being written

TableRow = tuple[str, str, list[int]]  # a tensor's name, wire dtype and shape
_WIRE_NAME = {d.safetensors: d.name for d in dtypes.BY_NAME.values()}


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
    """Every tensor of a checkpoint file at once, in host memory."""
    return load_file(str(path))


@dataclass(frozen=True)
class StoredCheckpoint:
    """A checkpoint file and its tensor table, read from its header: (name, wire dtype,
    shape) in the order the tensors lie in the file. Its tensors are read when streamed."""

    path: Path
    table: list[TableRow]

    @classmethod
    def open(cls, path: str | Path) -> StoredCheckpoint:
        with safe_open(str(path), framework="pt") as file:
            # in file order where safetensors tells it (offset_keys, in recent versions), so
            # the reads run through the file once, front to back
            names = file.offset_keys() if hasattr(file, "offset_keys") else file.keys()
            table = [_table_row(file, name) for name in names]
        return cls(Path(path), table)

    @contextmanager
    def reading(self, device: torch.device) -> Iterator[Callable[[str], torch.Tensor]]:
        """name -> that tensor, read from the file onto device (through host memory, where
        it is one tensor at a time)."""
        with safe_open(str(self.path), framework="pt", device=str(device)) as file:
            yield file.get_tensor

    def copy_into(self, targets: Mapping[str, torch.Tensor], device: torch.device) -> None:
        """Every tensor copied into targets[name] (cast to its dtype), read one at a time
        onto device and dropped before the next; the first failure ends it (nothing more is
        read) and is raised once the file is closed."""
        with self.reading(device) as read:
            failure = copy_tensors(self.table, read, targets)
        if failure is not None:
            raise failure


def _table_row(file: Any, name: str) -> TableRow:
    tensor = file.get_slice(name)
    return name, _WIRE_NAME[tensor.get_dtype()], list(tensor.get_shape())


def nbytes(row: TableRow) -> int:
    """The byte size of a table's tensor."""
    _, dtype, shape = row
    return torch.Size(shape).numel() * dtypes.BY_NAME[dtype].torch.itemsize


def allocate_bytes(count: int, device: torch.device) -> torch.Tensor:
    """count uninitialised bytes on device: the one place a receive buffer's memory comes
    from."""
    return torch.empty(count, dtype=torch.uint8, device=device)


def receive_buffer(table: Sequence[TableRow], device: torch.device) -> torch.Tensor:
    """The buffer every tensor of table passes through on this rank: bytes on device, as
    many as the largest tensor's. Raises what the allocation raises (out of memory)."""
    return allocate_bytes(max((nbytes(row) for row in table), default=0), device)


def tensor_view(buffer: torch.Tensor, row: TableRow) -> torch.Tensor:
    """row's tensor as a view of the buffer's first bytes, in its dtype and shape (aligned as
    the buffer's start is: the allocator aligns it for every dtype)."""
    _, dtype, shape = row
    return buffer[: nbytes(row)].view(dtypes.BY_NAME[dtype].torch).view(shape)


@torch.no_grad()
def copy_tensors(
    table: Sequence[TableRow],
    read: Callable[[str], torch.Tensor],
    targets: Mapping[str, torch.Tensor],
) -> Exception | None:
    """One process: each tensor read, copied into targets[name] (cast to the target's dtype)
    and dropped before the next. Returns the first failure; nothing is read after it."""
    for name, _, _ in table:
        try:
            targets[name].copy_(read(name))
        except Exception as exc:
            return exc
    return None


@torch.no_grad()
def stream_tensors(
    table: Sequence[TableRow],
    read: Callable[[str], torch.Tensor] | None,
    broadcast: Callable[[torch.Tensor], object],
    targets: Mapping[str, torch.Tensor],
    buffer: torch.Tensor,
) -> Exception | None:
    """The table's tensors one at a time through buffer (from `receive_buffer`): where the
    file is (read), each is read and copied into the buffer; broadcast then carries the
    tensor's bytes from that rank into every other rank's buffer, in place; each rank copies
    the typed view of them into targets[name] (cast to the target's dtype). Nothing is
    allocated beyond what read returns. Returns this rank's first failure (a read or a
    copy): after it nothing more is read or copied, but every tensor still goes through
    broadcast, so the ranks' collectives stay in step; what the buffer then holds is not the
    checkpoint's, which the caller tells the other ranks (a failure on the reading rank) or
    reports (elsewhere)."""
    failure: Exception | None = None
    for row in table:
        name = row[0]
        view = tensor_view(buffer, row)
        if read is not None and failure is None:
            try:
                tensor = read(name)
                view.copy_(tensor)
                del tensor
            except Exception as exc:
                failure = exc
        broadcast(buffer[: nbytes(row)])
        if failure is None:
            try:
                targets[name].copy_(view)
            except Exception as exc:
                failure = exc
        del view
    return failure
