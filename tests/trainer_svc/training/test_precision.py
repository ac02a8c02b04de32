"""Trainable weights train in float32 (master weights), frozen ones stay as loaded."""

import pytest
import torch

from trainer_svc.training.precision import (
    describe,
    low_precision_trainable,
    stored_dtypes,
    upcast_trainable,
    wire_dtypes,
)


class Tied(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(10, 4)
        self.head = torch.nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight  # tied, as many LMs' are
        self.frozen = torch.nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def test_trainable_low_precision_weights_become_float32_and_frozen_ones_stay():
    model = Tied().to(torch.bfloat16)
    found = upcast_trainable(model)
    assert found == {"embed.weight": torch.bfloat16}  # the tied weight is named once
    assert model.embed.weight.dtype == torch.float32 and model.head.weight is model.embed.weight
    assert model.frozen.weight.dtype == torch.bfloat16
    assert low_precision_trainable(model) == {}
    assert describe(found) == "1 trainable tensors from bfloat16"
    assert upcast_trainable(model) == {}  # nothing left to upcast


def test_a_float16_model_is_upcast_too():
    model = torch.nn.Linear(2, 2).half()
    assert set(upcast_trainable(model).values()) == {torch.float16}
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def _step_with_grad_scaler(model: torch.nn.Module) -> None:
    """One fp16 mixed-precision step as the Trainer's `fp16: true` takes it on a GPU: a
    scaled backward, the gradients unscaled, the step (the CPU's GradScaler, same checks)."""
    scaler = torch.amp.GradScaler("cpu")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    ids = torch.randint(3, 250, (2, 16))
    loss = model(input_ids=ids, labels=ids).loss.float()
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    scaler.step(optimizer)
    scaler.update()


def test_a_float16_model_steps_under_fp16_once_upcast(tmp_path):
    """A float16 checkpoint (the Llama 2 family) with `fp16: true`: trained as loaded, the
    GradScaler refuses its float16 gradients at the first step; upcast, the step runs."""
    from transformers import AutoModelForCausalLM

    from delta_loss_devtools.tiny_model import build_tiny_model

    path = build_tiny_model(tmp_path / "tiny-fp16", dtype="float16")
    as_loaded = AutoModelForCausalLM.from_pretrained(path)
    assert next(as_loaded.parameters()).dtype == torch.float16
    with pytest.raises(ValueError, match="Attempting to unscale FP16 gradients"):
        _step_with_grad_scaler(as_loaded)
    upcast = AutoModelForCausalLM.from_pretrained(path)
    upcast_trainable(upcast)
    before = upcast.lm_head.weight.detach().clone()
    _step_with_grad_scaler(upcast)
    assert not torch.equal(upcast.lm_head.weight, before)


def test_a_tied_weight_travels_as_stored_under_both_its_names():
    """The state dict, which a full checkpoint carries, names a tied weight twice; both go in
    the dtype it was stored in."""
    model = Tied().to(torch.bfloat16)
    upcast = upcast_trainable(model)
    assert wire_dtypes(model, upcast) == {
        "embed.weight": torch.bfloat16, "head.weight": torch.bfloat16,
    }  # fmt: skip


def test_a_users_upcast_model_travels_in_its_configs_dtype(tiny_bf16_model, tiny_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_bf16_model)
    upcast_trainable(model)
    stored = stored_dtypes(model)
    assert set(stored) == set(model.state_dict()) and set(stored.values()) == {torch.bfloat16}
    model._keep_in_fp32_modules = ["lm_head"]  # what transformers keeps float32 stays so
    assert "lm_head.weight" not in stored_dtypes(model)
    assert stored_dtypes(AutoModelForCausalLM.from_pretrained(tiny_model)) == {}  # float32
