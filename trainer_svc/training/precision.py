"""The dtype the trainer's weights train in: float32 master weights for whatever is trained,
unless pure_bf16 asks for bfloat16 weights and optimizer states (as LLaMA-Factory does).

A base model stored in bfloat16 or float16 (nearly every released checkpoint) loads in that
dtype. Trained as it is, every optimizer step rounds to its 8 or 11 bits of mantissa: at a
learning rate of 1e-5 most updates round to nothing and training quietly stalls, and a
float16 model's gradients cannot be unscaled by fp16's GradScaler. Trainable parameters are
therefore upcast to float32; `bf16`/`fp16` then compute under autocast, as mixed precision
means. Frozen weights (a LoRA run's base) stay as loaded.
"""

from __future__ import annotations

import torch

LOW_PRECISION = (torch.bfloat16, torch.float16)


def low_precision_trainable(model: torch.nn.Module) -> dict[str, torch.dtype]:
    """The trainable parameters held in bfloat16 or float16, by name."""
    return {
        name: p.dtype
        for name, p in model.named_parameters()
        if p.requires_grad and p.dtype in LOW_PRECISION
    }


def upcast_trainable(model: torch.nn.Module) -> dict[str, torch.dtype]:
    """Make every trainable bfloat16/float16 parameter float32 in place (tied weights once);
    returns the dtype each had."""
    found = low_precision_trainable(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in found and p.dtype in LOW_PRECISION:  # a tied one is cast once
                p.data = p.data.float()
    return found


def wire_dtypes(model: torch.nn.Module, upcast: dict[str, torch.dtype]) -> dict[str, torch.dtype]:
    """The dtype each upcast tensor travels in (as it was stored), by every name the state
    dict gives it: a tied weight is one parameter under two names there."""
    by_id = {id(p): upcast[name] for name, p in model.named_parameters() if name in upcast}
    return {
        name: by_id[id(tensor)]
        for name, tensor in model.state_dict(keep_vars=True).items()
        if id(tensor) in by_id
    }


def stored_dtypes(model: torch.nn.Module) -> dict[str, torch.dtype]:
    """For a model whose config names a bfloat16 or float16 dtype (how it was stored): its
    float32 state-dict tensors by name, to travel in that dtype, but for the modules
    transformers keeps in float32 whatever the dtype (`_keep_in_fp32_modules`). Nothing for
    a model stored in float32, or without a config."""
    config = getattr(model, "config", None)
    stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(stored, str):
        stored = getattr(torch, stored, None)
    if stored not in LOW_PRECISION:
        return {}
    kept = tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
    return {
        name: stored
        for name, tensor in model.state_dict().items()
        if tensor.dtype == torch.float32 and not any(k in name.split(".") for k in kept)
    }


def describe(found: dict[str, torch.dtype]) -> str:
    """'N tensors from bfloat16', for the log."""
    names = sorted({str(d).removeprefix("torch.") for d in found.values()})
    return f"{len(found)} trainable tensors from {'/'.join(names)}"
