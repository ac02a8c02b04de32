"""The checkpoint an update sends, copied once into a host buffer the next updates reuse.

Training changes the weights in place right after an update, so what is sent must be a copy:
one device-to-host copy of each tensor into one buffer (page-locked when the tensors are on a
GPU, so the copy runs at the bus's speed), the tensors end to end in the order of the wire's
table. The upload streams from that buffer (common.wire.protocol.upload_messages) while training
goes on. A stopped run keeps an upload that was not acknowledged beside its checkpoint
(`save_unsent`), and the resumed run sends it again (`load_unsent`).

The buffer is ordinary host memory of the checkpoint's exact size, page-locked where it is by
CUDA's host registration (`HostPin`): torch's pinned allocator rounds each allocation up to the
next power of two, which would lock up to twice the checkpoint's size in RAM.

A model sharded by FSDP (`sharded`) holds a slice of each parameter per rank: `gather_full`
gathers its full state dict to rank 0's host memory first, one parameter at a time, with every
rank taking part, and the snapshot is then copied from that.
"""

from __future__ import annotations

import contextlib
import logging
import os
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from safetensors import safe_open

from common.wire.protocol import payload_table, tensor_bytes
from common.wire.safetensors_file import safetensors_prefix

UNSENT_FILE = "unsent_checkpoint.safetensors"

logger = logging.getLogger(__name__)


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


# cudaHostRegisterPortable: pinned for every CUDA context of the process, not only the
# current device's (as torch's own pinned memory is)
HOST_REGISTER_PORTABLE = 1
# Buffers whose page-locking CUDA would not release: kept alive, never handed back to the
# allocator while CUDA may still treat their pages as pinned.
_UNRELEASED: list[torch.Tensor] = []


class HostPinError(RuntimeError):
    """CUDA refused to page-lock host memory, or to release it."""


class HostPin:
    """Page-locks host memory where it is, with CUDA's host registration: the memory keeps its
    size, and copies between it and a GPU run at the bus's speed."""

    def register(self, address: int, nbytes: int) -> None:
        """Page-lock the nbytes from address (HostPinError if CUDA refuses)."""
        cudart = torch.cuda.cudart()
        result = cudart.cudaHostRegister(address, nbytes, HOST_REGISTER_PORTABLE)
        _check(cudart, result, f"cudaHostRegister of {_size(nbytes)}")

    def unregister(self, address: int) -> None:
        """Release the page-locking of the memory registered at address."""
        cudart = torch.cuda.cudart()
        _check(cudart, cudart.cudaHostUnregister(address), "cudaHostUnregister")


def _check(cudart: Any, result: Any, call: str) -> None:
    """HostPinError with CUDA's message when result is not success. The failed call stays
    this thread's last CUDA error, which torch would report at its next kernel launch as that
    kernel's failure: it is taken here first."""
    code = int(result)
    if code == 0:
        return
    message = cudart.cudaGetErrorString(cudart.cudaError(code))
    _take_last_cuda_error()
    raise HostPinError(f"{call} failed: {message} (CUDA error {code})")


def _take_last_cuda_error() -> None:
    """Clear this thread's last CUDA error: torch's runtime bindings do not expose
    cudaGetLastError, but the check after a kernel launch reads (and so clears) it."""
    with contextlib.suppress(RuntimeError):  # the error reported is the one being taken
        torch.zeros(1, device="cuda")


class _Registration:
    """The page-locking of one buffer, released once: when the snapshot replaces or drops the
    buffer, or else when the snapshot is collected. It holds the buffer, so the memory is
    never freed while it is registered."""

    def __init__(self, owner: Snapshot, host_pin: HostPin, buffer: torch.Tensor) -> None:
        host_pin.register(buffer.data_ptr(), buffer.numel())
        self._host_pin = host_pin
        self._buffer: torch.Tensor | None = buffer
        self._collected = weakref.finalize(owner, self._release_quietly)
        self._collected.atexit = False  # the process's exit releases it

    def release(self) -> None:
        """Unregister the buffer, then let it go. If CUDA refuses (HostPinError), the buffer
        is kept for the process's life instead of freed while still registered."""
        self._collected.detach()
        buffer, self._buffer = self._buffer, None
        if buffer is None:
            return
        try:
            self._host_pin.unregister(buffer.data_ptr())
        except HostPinError:
            _UNRELEASED.append(buffer)
            raise

    def _release_quietly(self) -> None:
        """release, for a snapshot being collected, where nothing can raise: logged instead."""
        try:
            self.release()
        except HostPinError as error:
            logger.warning("the snapshot buffer's page-locking was not released: %s", error)


class Snapshot:
    """A reusable host buffer: `take` copies the tensors into it (the buffer is reallocated
    only when the size changes). What `take` returned is valid until the next `take`.
    host_pin page-locks the buffer for a GPU's tensors (CUDA's host registration by default)."""

    def __init__(self, host_pin: HostPin | None = None) -> None:
        self._host_pin = HostPin() if host_pin is None else host_pin
        self._buffer: torch.Tensor | None = None
        self._locked = False
        self._registration: _Registration | None = None
        # The dtype a tensor travels in when it is not its own, by name: float32 master
        # weights go in the dtype the model was stored in (cast as they are copied).
        self.wire_dtypes: Mapping[str, torch.dtype] = {}

    def _as_sent(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each tensor as it travels: itself, or a weightless one of its wire dtype."""
        out = {}
        for name, tensor in tensors.items():
            dtype = self.wire_dtypes.get(name, tensor.dtype)
            same = dtype == tensor.dtype
            out[name] = tensor if same else torch.empty(tensor.shape, dtype=dtype, device="meta")
        return out

    @property
    def nbytes(self) -> int:
        return 0 if self._buffer is None else self._buffer.numel()

    def reserve(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Make the buffer for these tensors now, its pages touched, so that the first update
        pays only the copy."""
        sent = self._as_sent(tensors).values()
        total = sum(t.numel() * t.element_size() for t in sent)
        self._buffer_for(total, _on_gpu(tensors), zeroed=True)

    def release(self) -> None:
        """Unregister and free the buffer now (the next `take` makes a new one)."""
        self._drop()

    def _buffer_for(self, total: int, on_gpu: bool, *, zeroed: bool = False) -> torch.Tensor:
        """The buffer, made again only when the size changes (or a GPU run needs it locked)."""
        buffer = self._buffer
        if buffer is None or buffer.numel() != total or (on_gpu and not self._locked):
            buffer = None
            self._drop()  # the old one is unregistered and freed before the new one is made
            self._buffer = buffer = self._make(total, on_gpu, zeroed)
        return buffer

    def _drop(self) -> None:
        """Release the buffer's registration, if it has one, then let the buffer go."""
        registration, self._registration = self._registration, None
        self._buffer, self._locked = None, False
        if registration is not None:
            registration.release()

    def _make(self, total: int, on_gpu: bool, zeroed: bool) -> torch.Tensor:
        """A buffer of exactly total bytes; page-locked where it is for a GPU's tensors, or
        by torch's pinned allocator if CUDA refuses to lock it."""
        buffer = _allocate(total, zeroed=zeroed)
        if not on_gpu:
            return buffer
        self._locked = True
        if total == 0:
            return buffer  # nothing to lock
        try:
            self._registration = _Registration(self, self._host_pin, buffer)
            return buffer
        except HostPinError as error:  # its traceback holds the buffer until the block ends
            warning = _fallback_warning(total, error)
        del buffer  # freed before the pinned one is made
        logger.warning(warning)
        return _allocate(total, zeroed=zeroed, pinned=True)

    def take(self, upload: CheckpointUpload) -> CheckpointUpload:
        sent = self._as_sent(upload.tensors)
        table = payload_table(sent)
        on_gpu = _on_gpu(upload.tensors)
        buffer = self._buffer_for(sum(entry.length for entry in table), on_gpu)
        views = {}
        with torch.no_grad():
            for entry, (name, tensor) in zip(table, upload.tensors.items(), strict=True):
                views[name] = view = _view(buffer, entry.offset, sent[name])
                if view.dtype != tensor.dtype:  # cast as it is copied, on the tensor's device
                    view.copy_(tensor.detach(), non_blocking=on_gpu)
                    continue
                target = buffer[entry.offset : entry.offset + entry.length]
                source = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
                target.copy_(source, non_blocking=on_gpu)
        if on_gpu:
            torch.cuda.synchronize()
        payload = memoryview(buffer.numpy()) if buffer.numel() else memoryview(b"")  # type: ignore[arg-type]
        return CheckpointUpload(
            upload.run_id, upload.step, upload.update_index, upload.kind, views, payload
        )


def sharded(model: torch.nn.Module) -> bool:
    """Whether FSDP2 (`fully_shard`, as accelerate applies it) shards the model's parameters."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def gather_full(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The full, unsharded state dict of an FSDP2 model on rank 0, in host memory, under the
    names and dtypes of the unwrapped model's state_dict (what a DDP run sends); {} on the
    other ranks. A collective: every rank calls it, at the same point of training.

    torch.distributed.checkpoint gathers one parameter at a time: each rank holds one whole
    parameter beside its shard while it is gathered, and rank 0 moves it to host memory
    before the next. Rank 0's host then holds one full copy of the state dict in the dtype
    it trains in (4 bytes a parameter for float32 master weights) until the update that
    asked for it ends, beside the snapshot buffer the copy is taken into (the checkpoint
    once more, in its wire dtype): 6 bytes a parameter for a bfloat16 model, 8 for a float32
    one, on top of what training holds there."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return cast(dict[str, torch.Tensor], get_model_state_dict(model, options=options))


def _allocate(total: int, *, zeroed: bool, pinned: bool = False) -> torch.Tensor:
    """total bytes of host memory: zeroed (its pages touched) or not; pinned by torch's
    caching allocator (rounded up to a power of two) or ordinary memory of exactly total."""
    make = torch.zeros if zeroed else torch.empty
    return make(total, dtype=torch.uint8, pin_memory=pinned)


def _fallback_warning(total: int, error: HostPinError) -> str:
    """What falling back to torch's pinned allocator costs, in page-locked RAM."""
    rounded = 1 << (total - 1).bit_length()
    return (
        f"{error}; the snapshot buffer is pinned by torch's allocator instead, which rounds its "
        f"{_size(total)} up to {_size(rounded)} of page-locked memory "
        f"({_size(rounded - total)} more)"
    )


def _size(nbytes: int) -> str:
    """nbytes for a person: bytes, or MiB/GiB with two decimals."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20)):
        if nbytes >= scale:
            return f"{nbytes / scale:.2f} {unit}"
    return f"{nbytes} bytes"


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
