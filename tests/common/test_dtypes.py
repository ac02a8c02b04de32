"""One dtype table for the wire, the checkpoint files and the compute dtype."""

import pytest
import torch
from safetensors.torch import load, save

from common import dtypes


@pytest.mark.parametrize("name", sorted(dtypes.BY_NAME))
def test_every_wire_dtype_has_its_safetensors_code(name):
    entry = dtypes.BY_NAME[name]
    tensor = torch.zeros(2, dtype=entry.torch)
    blob = save({"t": tensor})
    assert f'"dtype":"{entry.safetensors}"' in blob[8:200].decode(errors="ignore")
    assert load(blob)["t"].dtype == entry.torch
    assert dtypes.name_of(entry.torch) == name
    assert entry.is_float == entry.torch.is_floating_point


def test_a_dtype_that_cannot_be_sent_is_named():
    with pytest.raises(ValueError, match="complex64"):
        dtypes.name_of(torch.complex64)


@pytest.mark.parametrize(
    ("capability", "expected"),
    [
        ((9, 0), torch.bfloat16),
        ((8, 0), torch.bfloat16),
        ((7, 5), torch.float16),
        ((7, 0), torch.float16),
    ],
    ids=["H100", "A100", "T4", "V100"],
)
def test_compute_dtype_auto_picks_bfloat16_only_where_the_gpu_has_it(
    monkeypatch, capability, expected
):
    """bfloat16 is emulated (slow) before Ampere: T4 and V100 compute in float16."""
    asked = []
    monkeypatch.setattr(
        torch.cuda, "get_device_capability", lambda device: asked.append(device) or capability
    )
    assert dtypes.compute_dtype("auto", torch.device("cuda:1")) == expected
    assert asked == [torch.device("cuda:1")]  # the scorer's GPU, not the current one


def test_compute_dtype_auto_depends_on_the_device():
    assert dtypes.compute_dtype("auto", torch.device("cpu")) == torch.float32
    assert dtypes.compute_dtype("float16", torch.device("cpu")) == torch.float16
    with pytest.raises(ValueError, match="int64"):
        dtypes.compute_dtype("int64", torch.device("cpu"))
