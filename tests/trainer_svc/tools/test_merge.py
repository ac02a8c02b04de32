"""Merge and export: the exported model is the base with the adapter applied, loaded alone."""

import json
import logging
import os
import stat
import subprocess
import sys

import pytest
import torch
import yaml
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from common.data.samples import Sample
from common.data.templates import TEMPLATES, render_text
from common.data.tokenization import chat_messages, render_turn_texts
from delta_loss_devtools.demo_data import write_dataset
from delta_loss_devtools.fake_scorer import FakeScorer
from delta_loss_devtools.tiny_model import build_tiny_model
from tests.conftest import ROOT
from tests.support.trainer import trainer_config
from trainer_svc import cli
from trainer_svc.config.train_config import ConfigError, parse_config
from trainer_svc.tools.merge import AdapterMismatch, chat_template_for, export, parse_export_config
from trainer_svc.training.recipe import run

TEXTS = ["Repeat the word: apple", "Add 12 and 30.\n\n### Response:\n42"]


@pytest.fixture(scope="module")
def adapter(tiny_model, tmp_path_factory):
    """A LoRA adapter saved without training, its lora_B made non-zero so merging matters."""
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model),
        LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    generator = torch.Generator().manual_seed(3)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data = torch.randn(param.shape, generator=generator) * 0.05
    out = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(out)
    return out


def merge_cfg(tiny_model, adapter, export_dir, **over):
    raw = dict(
        model_name_or_path=str(tiny_model),
        adapter_name_or_path=str(adapter),
        template="plain",
        export_dir=str(export_dir),
    )
    raw.update(over)
    return parse_export_config(raw)


def logits(model, tokenizer) -> torch.Tensor:
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits


def assert_export_matches(export_dir, tiny_model, adapter):
    """The export, loaded with no adapter, gives the logits of base + adapter (float32)."""
    assert not (export_dir / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(export_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(export_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    base_logits = logits(base, tokenizer)
    reference = PeftModel.from_pretrained(base, adapter).eval()
    expected, got = logits(reference, tokenizer), logits(merged, tokenizer)
    assert torch.allclose(got, expected, atol=1e-5, rtol=0), (got - expected).abs().max()
    assert (expected - base_logits).abs().max() > 1e-3  # the adapter does change the model
    return tokenizer


def shard_files(export_dir, suffix):
    return sorted(p.name for p in export_dir.glob(f"*{suffix}"))


# ---- the merge ----
@pytest.mark.slow
def test_trained_lora_run_exports_to_the_same_logits(tiny_model, tmp_path):
    data = write_dataset(tmp_path / "d.json", n=16, seed=2)
    out = tmp_path / "run"
    raw = trainer_config(
        tiny_model, data, out, template="plain", cutoff_len=64, update_times=2,
        gradient_accumulation_steps=1, learning_rate=1e-2,
    )  # fmt: skip
    loaded = parse_config(raw)
    run(loaded, scorer=FakeScorer(16))
    assert (out / "adapter_config.json").is_file()

    previous = os.umask(0o022)
    try:
        export_dir = export(merge_cfg(tiny_model, out, tmp_path / "merged"))
    finally:
        os.umask(previous)
    assert stat.S_IMODE(export_dir.stat().st_mode) == 0o755  # as mkdir makes it: others read
    assert shard_files(export_dir, ".safetensors") == ["model.safetensors"]
    tokenizer = assert_export_matches(export_dir, tiny_model, out)
    # the training prompt format travels with the tokenizer as its chat template
    messages = [{"role": "user", "content": "Repeat the word: apple"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    [(trained, _)] = render_turn_texts(tokenizer, Sample(((messages[0]["content"], ""),)), "plain")
    assert prompt == trained == "### Instruction:\nRepeat the word: apple\n\n### Response:\n"


def test_tiny_export_size_splits_into_shards(tiny_model, adapter, tmp_path):
    cfg = merge_cfg(tiny_model, adapter, tmp_path / "merged", export_size=0.0001)  # 100 kB
    export_dir = export(cfg)
    shards = shard_files(export_dir, ".safetensors")
    index = json.loads((export_dir / "model.safetensors.index.json").read_text())
    assert len(shards) > 2 and sorted(set(index["weight_map"].values())) == shards
    for shard in shards:
        tensors_in_shard = sum(1 for f in index["weight_map"].values() if f == shard)
        # a shard is at most export_size, unless it holds one tensor larger than that
        assert (export_dir / shard).stat().st_size <= 100_000 + 1_000 or tensors_in_shard == 1
    assert_export_matches(export_dir, tiny_model, adapter)


def test_legacy_format_writes_bin_files(tiny_model, adapter, tmp_path):
    cfg = merge_cfg(
        tiny_model, adapter, tmp_path / "merged", export_size=0.0001, export_legacy_format=True
    )
    export_dir = export(cfg)
    assert not shard_files(export_dir, ".safetensors")
    shards = shard_files(export_dir, ".bin")
    index = json.loads((export_dir / "pytorch_model.bin.index.json").read_text())
    assert len(shards) > 2 and sorted(set(index["weight_map"].values())) == shards
    assert_export_matches(export_dir, tiny_model, adapter)


def test_builtin_template_becomes_the_chat_template(tiny_model, adapter, tmp_path):
    export_dir = export(merge_cfg(tiny_model, adapter, tmp_path / "m", template="llama3"))
    tokenizer = AutoTokenizer.from_pretrained(export_dir)
    sample = Sample(turns=(("Add 1 and 2.", "3"), ("And 2 and 2?", "4")), system="Be brief.")
    text = tokenizer.apply_chat_template(chat_messages(sample, 2, True), tokenize=False)
    assert text == "".join(p + r for p, r in render_turn_texts(tokenizer, sample, "llama3"))
    assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n4<|eot_id|>")


SAMPLES = [
    Sample(turns=(("U", "A"),)),
    Sample(turns=(("U", "A"),), system="S"),
    Sample(turns=(("U1", "A1"), ("U2 {content}", "A2 'quoted'")), system='S "x"\n'),
]


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_exported_chat_template_writes_the_training_text(name):
    """Each built-in's chat template, rendered as transformers renders it, is the text the
    trainer tokenized: the whole conversation, and each prompt with the generation prompt."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    template = env.from_string(chat_template_for(name))
    for bos, eos in (("<s>", "</s>"), (None, "</s>"), (None, None)):
        for sample in SAMPLES:
            n = len(sample.turns)
            whole = template.render(
                messages=chat_messages(sample, n, True), bos_token=bos, eos_token=eos
            )
            assert whole == render_text(TEMPLATES[name], sample, bos, eos)
            asked = template.render(
                messages=chat_messages(sample, n, False),
                add_generation_prompt=True,
                bos_token=bos,
                eos_token=eos,
            )
            last_response = render_text(TEMPLATES[name], sample, bos, eos).removeprefix(asked)
            assert asked + last_response == whole and last_response.startswith(
                (" " if name == "mistral" else "") + sample.response
            )


def test_overwrite_replaces_an_existing_export(tiny_model, adapter, tmp_path):
    export_dir = tmp_path / "merged"
    export_dir.mkdir()
    (export_dir / "old.txt").write_text("old")
    export(merge_cfg(tiny_model, adapter, export_dir, overwrite_export_dir=True))
    assert not (export_dir / "old.txt").exists() and (export_dir / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]  # no temporary left


# ---- errors: clear, before heavy work, nothing half-written ----
def test_bad_paths_are_reported_together(tmp_path):
    not_adapter = tmp_path / "not_adapter"
    not_adapter.mkdir()
    export_dir = tmp_path / "merged"
    export_dir.mkdir()
    (export_dir / "x").write_text("x")
    with pytest.raises(ConfigError) as err:
        parse_export_config(
            dict(
                model_name_or_path=str(tmp_path / "missing_base"),
                adapter_name_or_path=str(not_adapter),
                export_dir=str(export_dir),
                export_device="gpu",
                export_size=0,
            )
        )
    problems = err.value.problems
    assert set(problems) == {
        "model_name_or_path",
        "adapter_name_or_path",
        "export_dir",
        "export_device",
        "export_size",
    }
    assert "does not exist" in problems["model_name_or_path"]
    assert "adapter_config.json" in problems["adapter_name_or_path"]
    assert "overwrite_export_dir" in problems["export_dir"]


def test_missing_adapter_path(tiny_model, tmp_path):
    with pytest.raises(ConfigError) as err:
        merge_cfg(tiny_model, tmp_path / "nope", tmp_path / "merged")
    assert set(err.value.problems) == {"adapter_name_or_path"}
    assert "does not exist" in err.value.problems["adapter_name_or_path"]


def test_export_dir_may_not_replace_an_input(tiny_model, adapter, tmp_path):
    with pytest.raises(ConfigError) as err:
        merge_cfg(tiny_model, adapter, adapter.parent, overwrite_export_dir=True)
    assert "input" in err.value.problems["export_dir"]


@pytest.mark.parametrize("shape", [dict(hidden_size=32), dict(layers=1)], ids=["width", "depth"])
def test_adapter_for_another_base_fails_before_loading_weights(
    adapter, tmp_path, monkeypatch, shape
):
    other = build_tiny_model(tmp_path / "other", **shape)
    loads = []
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *a, **k: loads.append(a))
    with pytest.raises(AdapterMismatch) as err:
        export(merge_cfg(other, adapter, tmp_path / "merged"))
    message = err.value.problems["adapter_name_or_path"]
    assert "does not fit" in message
    assert ("input size 32" in message) if "hidden_size" in shape else ("no module" in message)
    assert not loads and sorted(p.name for p in tmp_path.iterdir()) == ["other"]


def test_same_shapes_other_base_name_only_warns(adapter, tmp_path, caplog):
    other = build_tiny_model(tmp_path / "other", seed=5)
    with caplog.at_level(logging.WARNING, logger="trainer_svc.tools.merge"):
        export(merge_cfg(other, adapter, tmp_path / "merged"))
    assert "was trained on" in caplog.text and (tmp_path / "merged").is_dir()


def test_failure_while_saving_leaves_nothing(tiny_model, adapter, tmp_path, monkeypatch):
    export_dir = tmp_path / "merged"
    export_dir.mkdir()
    (export_dir / "old.txt").write_text("old")

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("trainer_svc.tools.merge.save_tokenizer", broken)
    with pytest.raises(OSError, match="disk full"):
        export(merge_cfg(tiny_model, adapter, export_dir, overwrite_export_dir=True))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]
    assert [p.name for p in export_dir.iterdir()] == ["old.txt"]  # the old export is kept


# ---- the command line ----
def test_cli_bad_config_exits_2_naming_every_key(tmp_path, caplog, monkeypatch):
    loads = []
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *a, **k: loads.append(a))
    path = tmp_path / "merge.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "model_name_or_path": str(tmp_path / "no_model"),
                "adapter_name_or_path": str(tmp_path / "no_adapter"),
                "export_dir": str(tmp_path / "out"),
                "export_legacy_format": "sometimes",
                "typo_key": 1,
            }
        )
    )
    assert cli.main(["export", str(path)]) == 2
    for key in ("model_name_or_path", "adapter_name_or_path", "export_legacy_format"):
        assert f"  {key}:" in caplog.text
    assert "typo_key" in caplog.text and not loads and not (tmp_path / "out").exists()


def test_cli_adapter_mismatch_exits_2(adapter, tmp_path, caplog):
    other = build_tiny_model(tmp_path / "other", hidden_size=32)
    args = [f"model_name_or_path={other}", f"adapter_name_or_path={adapter}"]
    argv = ["export", str(ROOT / "examples" / "merge_lora.yaml"), *args]
    assert cli.main([*argv, f"export_dir={tmp_path / 'out'}"]) == 2
    assert "adapter_name_or_path:" in caplog.text and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_example_merge_yaml_runs_through_the_cli(tiny_model, adapter, tmp_path):
    export_dir = tmp_path / "merged"
    cmd = [
        sys.executable, "-m", "trainer_svc", "export", "examples/merge_lora.yaml",
        f"model_name_or_path={tiny_model}", f"adapter_name_or_path={adapter}",
        f"export_dir={export_dir}",
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "exported to" in done.stderr
    tokenizer = assert_export_matches(export_dir, tiny_model, adapter)
    assert tokenizer.chat_template  # from the example's template: llama3
