"""Trainable weights train in float32 (master weights), frozen ones stay as loaded."""

import torch

from trainer_svc.precision import describe, low_precision_trainable, upcast_trainable


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
