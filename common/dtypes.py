"""The tensor dtypes the project knows, by name: one table for the wire, the checkpoint
files on disk and the model's compute dtype."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DType:
    name: str  # the wire name, as torch spells it without "torch."
    torch: torch.dtype
    safetensors: str  # safetensors' code for it
    is_float: bool


_ALL = (
    DType("float32", torch.float32, "F32", True),
    DType("float16", torch.float16, "F16", True),
    DType("bfloat16", torch.bfloat16, "BF16", True),
    DType("float64", torch.float64, "F64", True),
    DType("int64", torch.int64, "I64", False),
    DType("int32", torch.int32, "I32", False),
    DType("uint8", torch.uint8, "U8", False),
    DType("bool", torch.bool, "BOOL", False),
)
BY_NAME: dict[str, DType] = {d.name: d for d in _ALL}
BY_TORCH: dict[torch.dtype, DType] = {d.torch: d for d in _ALL}

# What a model may compute in; "auto" is float32 on CPU and bfloat16 on CUDA.
COMPUTE_DTYPES = ("auto", "float32", "bfloat16", "float16")


def name_of(dtype: torch.dtype) -> str:
    """The wire name of a torch dtype; ValueError for one that cannot be sent."""
    if dtype not in BY_TORCH:
        raise ValueError(f"dtype {dtype} cannot be sent; use one of {sorted(BY_NAME)}")
    return BY_TORCH[dtype].name


def compute_dtype(name: str, device: torch.device) -> torch.dtype:
    """The dtype a model is loaded in: `auto` picks bfloat16 on CUDA, float32 elsewhere."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"dtype {name!r} is not one of {COMPUTE_DTYPES}")
    return BY_NAME[name].torch
