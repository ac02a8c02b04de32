"""The model both sides build: LoRA settings, the skeleton, what a checkpoint carries, pad id."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from common.model_spec import (
    LoraSettings,
    ModelSpec,
    attention_problem,
    checkpoint_digest,
    checkpoint_tensors,
    empty_model,
    pad_id,
    quantization_problem,
)
from common.wire.protocol import LoraSpec
from tests.support.hub import FakeHub, aim_at

LORA = LoraSettings(r=4, alpha=8.0, dropout=0.1, target_modules=("q_proj", "v_proj"))


def test_lora_settings_round_trip_through_the_wire_spec():
    spec = LORA.to_spec()
    assert spec == LoraSpec(r=4, alpha=8.0, dropout=0.1, target_modules=["q_proj", "v_proj"])
    assert LoraSettings.from_spec(spec) == LORA


def test_peft_config_carries_every_setting():
    config = LORA.peft_config()
    assert (config.r, config.lora_alpha, config.lora_dropout) == (4, 8.0, 0.1)
    assert set(config.target_modules) == {"q_proj", "v_proj"}
    assert config.task_type == "CAUSAL_LM"


def test_model_spec_is_hashable_and_checks_its_kind():
    a = ModelSpec("/m", "lora", LORA)
    assert a == ModelSpec("/m", "lora", LoraSettings(4, 8.0, 0.1, ("q_proj", "v_proj")))
    assert len({a, ModelSpec("/m", "lora", LORA), ModelSpec("/m", "full")}) == 2
    with pytest.raises(ValueError, match="LoRA settings"):
        ModelSpec("/m", "lora")
    with pytest.raises(ValueError, match="LoRA settings"):
        ModelSpec("/m", "full", LORA)


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_skeleton_has_the_names_and_shapes_of_the_built_model(tiny_model, kind):
    spec = ModelSpec(str(tiny_model), kind, LORA if kind == "lora" else None)
    built, skeleton = spec.build(), spec.skeleton()
    shapes = {n: t.shape for n, t in checkpoint_tensors(built, kind).items()}
    assert shapes == {n: t.shape for n, t in checkpoint_tensors(skeleton, kind).items()}
    assert checkpoint_digest(built, kind) == checkpoint_digest(skeleton, kind)
    assert all(t.device.type == "meta" for t in checkpoint_tensors(skeleton, kind).values())


def test_a_lora_checkpoint_is_the_adapter_and_a_full_one_the_state_dict(tiny_model):
    lora_model = ModelSpec(str(tiny_model), "lora", LORA).build()
    lora = checkpoint_tensors(lora_model, "lora")
    assert lora and all("lora_A" in n or "lora_B" in n for n in lora)
    assert all(("q_proj" in n) or ("v_proj" in n) for n in lora)
    full_model = ModelSpec(str(tiny_model), "full").build()
    assert set(checkpoint_tensors(full_model, "full")) == set(full_model.state_dict())
    # the model's own tensors, not copies: an update copied into them changes the model
    name, tensor = next(iter(lora.items()))
    assert tensor.data_ptr() == dict(lora_model.named_parameters())[name].data_ptr()


def test_build_loads_in_the_dtype_asked_for(tiny_model):
    model = ModelSpec(str(tiny_model), "full").build(dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16


def test_empty_model_takes_no_memory_and_matches_the_real_one(tiny_model):
    skeleton = empty_model(str(tiny_model))
    real = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert {n: p.shape for n, p in skeleton.named_parameters()} == {
        n: p.shape for n, p in real.named_parameters()
    }
    assert {p.device.type for p in skeleton.parameters()} == {"meta"}


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A fake hub this process's huggingface_hub asks, and a working folder without models."""
    monkeypatch.chdir(tmp_path)
    with FakeHub() as hub:
        aim_at(hub, monkeypatch)
        yield hub


@pytest.mark.parametrize("build", ["build", "skeleton"])
def test_a_spec_built_from_local_files_only_never_asks_a_hub_for_the_model(hub, build):
    """huggingface_hub may still fetch its list of agents, whatever local_files_only says:
    only offline mode stops that (the scorer's command sets it)."""
    spec = ModelSpec("ws/evil-org-model", "lora", LORA)  # a hub repository's name
    with pytest.raises(OSError):
        getattr(spec, build)(local_files_only=True)
    assert [r for r in hub.requests if "evil-org-model" in r] == []
    with pytest.raises(OSError):  # by default (the trainer's loading) a hub may be asked
        getattr(spec, build)()
    assert [r for r in hub.requests if "evil-org-model" in r]


class _Tok:
    def __init__(self, pad, eos):
        self.pad_token_id, self.eos_token_id = pad, eos


@pytest.mark.parametrize(
    ("pad", "eos", "expected"), [(3, 1, 3), (None, 1, 1), (None, None, 0), (0, 5, 0)]
)
def test_pad_id_is_pad_then_eos_then_zero(pad, eos, expected):
    assert pad_id(_Tok(pad, eos)) == expected


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_the_attention_asked_for_is_the_one_built(tiny_model, implementation):
    spec = ModelSpec(str(tiny_model), "full", attn_implementation=implementation)
    assert spec.build().config._attn_implementation == implementation


def test_quantization_and_flash_attention_say_what_they_need():
    assert quantization_problem(None, cuda=False) is None
    assert "needs a CUDA GPU" in quantization_problem(4, cuda=False)
    assert "needs a CUDA GPU" in attention_problem("flash_attention_2", cuda=False)
    assert attention_problem("sdpa", cuda=False) is None
    lora = LoraSettings(4, 8.0, 0.0, "all-linear")
    assert "8-bit" in ModelSpec("m", "lora", lora, quantization_bit=8).load_problem(cuda=False)
    with pytest.raises(ValueError, match="LoRA adapters only"):
        ModelSpec("m", "full", quantization_bit=4)
