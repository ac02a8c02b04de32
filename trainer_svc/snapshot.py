"""The checkpoint an update sends, copied once into a host buffer the next updates reuse.

Training changes the weights in place right after an update, so what is sent must be a copy:
one device-to-host copy of each tensor into one buffer (pinned when the tensors are on a GPU,
so the copy runs at the bus's speed), the tensors end to end in the order of the wire's
table. The upload streams from that buffer (common.protocol.upload_messages) while training
goes on. A stopped run keeps an upload that was not acknowledged beside its checkpoint
(`save_unsent`), and the resumed run sends it again (`load_unsent`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from common.protocol import payload_table, tensor_bytes
from common.safetensors_file import safetensors_prefix

UNSENT_FILE = "unsent_checkpoint.safetensors"


@dataclass(frozen=True)
class CheckpointUpload:
    """One checkpoint to send: its run, global step, update index, kind and tensors. payload,
    when given, holds the tensors' bytes end to end in the mapping's order (a snapshot's
    buffer), and is sent as it is."""

    run_id: str
    step: int
    update_index: int
    kind: str
    tensors: Mapping[str, torch.Tensor]
    payload: memoryview | None = None

    def describe(self) -> str:
        return f"checkpoint step {self.step} (update {self.update_index})"


class Snapshot:
    """A reusable host buffer: `take` copies the tensors into it (the buffer is reallocated
    only when the size changes). What `take` returned is valid until the next `take`."""

    def __init__(self) -> None:
        self._buffer: torch.Tensor | None = None

    @property
    def nbytes(self) -> int:
        return 0 if self._buffer is None else self._buffer.numel()

    def reserve(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Make the buffer for these tensors now, its pages touched, so that the first update
        pays only the copy."""
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        self._buffer_for(total, _on_gpu(tensors), zeroed=True)

    def _buffer_for(self, total: int, on_gpu: bool, *, zeroed: bool = False) -> torch.Tensor:
        """The buffer, made again only when the size changes (or a GPU run needs it pinned)."""
        buffer = self._buffer
        if buffer is None or buffer.numel() != total or (on_gpu and not buffer.is_pinned()):
            self._buffer = buffer = None  # the old one is freed before the new one is made
            make = torch.zeros if zeroed else torch.empty
            self._buffer = buffer = make(total, dtype=torch.uint8, pin_memory=on_gpu)
        return buffer

    def take(self, upload: CheckpointUpload) -> CheckpointUpload:
        table = payload_table(upload.tensors)
        on_gpu = _on_gpu(upload.tensors)
        buffer = self._buffer_for(sum(entry.length for entry in table), on_gpu)
        views = {}
        with torch.no_grad():
            for entry, (name, tensor) in zip(table, upload.tensors.items(), strict=True):
                target = buffer[entry.offset : entry.offset + entry.length]
                source = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
                target.copy_(source, non_blocking=on_gpu)
                views[name] = _view(buffer, entry.offset, tensor)
        if on_gpu:
            torch.cuda.synchronize()
        payload = memoryview(buffer.numpy()) if buffer.numel() else memoryview(b"")  # type: ignore[arg-type]
        return CheckpointUpload(
            upload.run_id, upload.step, upload.update_index, upload.kind, views, payload
        )


def _on_gpu(tensors: Mapping[str, torch.Tensor]) -> bool:
    return any(t.device.type == "cuda" for t in tensors.values())


def _view(buffer: torch.Tensor, offset: int, like: torch.Tensor) -> torch.Tensor:
    """like's dtype and shape over the buffer's bytes from offset (no copy)."""
    count = like.numel()
    if count == 0:
        return torch.empty(like.shape, dtype=like.dtype)
    flat = torch.frombuffer(buffer.numpy(), dtype=like.dtype, count=count, offset=offset)
    return flat.reshape(like.shape)


def save_unsent(upload: CheckpointUpload, folder: Path) -> Path:
    """The upload as a safetensors file in folder, with what identifies it as metadata."""
    table = payload_table(upload.tensors)
    metadata = {
        "run_id": upload.run_id,
        "step": str(upload.step),
        "update_index": str(upload.update_index),
        "kind": upload.kind,
    }
    prefix = safetensors_prefix([(e.name, e.dtype, e.shape, e.length) for e in table], metadata)
    path = folder / UNSENT_FILE
    tmp = path.with_suffix(".partial")
    with open(tmp, "wb") as handle:
        handle.write(prefix)
        if upload.payload is not None:
            handle.write(upload.payload)
        else:
            for tensor in upload.tensors.values():
                handle.write(tensor_bytes(tensor))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def load_unsent(folder: Path) -> CheckpointUpload | None:
    """The upload a stopped run left unsent in its checkpoint folder, if any."""
    path = folder / UNSENT_FILE
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    return CheckpointUpload(
        meta["run_id"], int(meta["step"]), int(meta["update_index"]), meta["kind"], tensors
    )
