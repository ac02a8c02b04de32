"""The tensor dtypes the project knows, by name: one table for the wire, the checkpoint
files on disk and the model's compute dtype. torch is imported when a torch dtype is asked
for, not with this module: reading settings (a container's healthcheck) does not load it."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class DType:
    name: str  # the wire name, as torch spells it without "torch."
    safetensors: str  # safetensors' code for it
    is_float: bool

    @property
    def torch(self) -> torch.dtype:
        import torch

        dtype = getattr(torch, self.name)
        assert isinstance(dtype, torch.dtype)
        return dtype


_ALL = (
    DType("float32", "F32", True),
    DType("float16", "F16", True),
    DType("bfloat16", "BF16", True),
    DType("float64", "F64", True),
    DType("int64", "I64", False),
    DType("int32", "I32", False),
    DType("uint8", "U8", False),
    DType("bool", "BOOL", False),
)
BY_NAME: dict[str, DType] = {d.name: d for d in _ALL}

# What a model may compute in; "auto" is float32 on CPU, and on CUDA bfloat16 where the GPU
# computes it natively (compute capability 8.0 on: Ampere, Ada, Hopper, ...), else float16
# (bfloat16 is emulated, and slow, on Volta and Turing: V100, T4).
COMPUTE_DTYPES = ("auto", "float32", "bfloat16", "float16")
NATIVE_BF16_CAPABILITY = (8, 0)


@cache
def _by_torch() -> dict[torch.dtype, DType]:
    return {d.torch: d for d in _ALL}


def name_of(dtype: torch.dtype) -> str:
    """The wire name of a torch dtype; ValueError for one that cannot be sent."""
    by_torch = _by_torch()
    if dtype not in by_torch:
        raise ValueError(f"dtype {dtype} cannot be sent; use one of {sorted(BY_NAME)}")
    return by_torch[dtype].name


def compute_dtype(name: str, device: torch.device) -> torch.dtype:
    """The dtype a model is loaded in: `auto` picks bfloat16 on a GPU that computes it
    natively, float16 on an older GPU, float32 elsewhere."""
    import torch

    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        native = torch.cuda.get_device_capability(device) >= NATIVE_BF16_CAPABILITY
        return torch.bfloat16 if native else torch.float16
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"dtype {name!r} is not one of {COMPUTE_DTYPES}")
    return BY_NAME[name].torch
