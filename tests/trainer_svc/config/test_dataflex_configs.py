"""DataFlex 1.1.0's own example files, as its repository ships them: the delta_loss training
YAML (examples/train_lora/selectors/delta_loss.yaml) and the components file
(src/dataflex/configs/components.yaml, its nested selectors:/mixers:/weighters: sections) are
read as they are; only the model, data and output paths point at local copies. The seed's flat
components layout is read too."""

import json

import pytest
import yaml

from trainer_svc.config.train_config import ConfigError, load_config, parse_config

# examples/train_lora/selectors/delta_loss.yaml of DataFlex 1.1.0, comments and all
DATAFLEX_DELTA_LOSS_YAML = """\
### model
model_name_or_path: meta-llama/Llama-3.1-8B
trust_remote_code: true

### method
stage: sft
do_train: true
finetuning_type: lora
lora_target: all
lora_rank: 16
lora_alpha: 8

### dataset
dataset: alpaca_en_demo
template: llama3
cutoff_len: 4096
# max_samples: 100000000
overwrite_cache: true
preprocessing_num_workers: 16
dataloader_num_workers: 0
# disable_shuffling: true
seed: 42

### output
output_dir: ../dataflex_saves/Llama-3.1-8B/delta_loss
logging_steps: 10
save_steps: 100
plot_loss: true
save_only_model: false
overwrite_output_dir: true

### swanlab
report_to: none  # choices: [none, wandb, tensorboard, swanlab, mlflow]

### train
per_device_train_batch_size: 1
gradient_accumulation_steps: 1
learning_rate: 1.0e-4
num_train_epochs: 1.0
lr_scheduler_type: cosine
warmup_ratio: 0.1
bf16: true
ddp_timeout: 180000000

### Dataflex args
train_type: dynamic_select
components_cfg_file: src/dataflex/configs/components.yaml
component_name: delta_loss
warmup_step: 10
update_step: 10
update_times: 2  # Updates per Flex epoch; repeats by num_train_epochs

## eval
# val_size: 0.001
eval_dataset: alpaca_zh_demo
per_device_eval_batch_size: 1
metric_for_best_model: eval_loss
greater_is_better: false
load_best_model_at_end: false
eval_strategy: steps    # choices: [no, steps, epoch]
eval_steps: 10
"""

# src/dataflex/configs/components.yaml of DataFlex 1.1.0, abridged to a few entries per section
DATAFLEX_COMPONENTS_YAML = """\
# configs/components.yaml
selectors:
  less:
    name: less
    params:
      cache_dir: ../dataflex_saves/less_output
      gradient_type: adam
      proj_dim: 4096
      seed: 123
      save_interval: 16

  loss:
    name: loss
    params:
      cache_dir: ../dataflex_saves/loss_output
      focus: "medium"

  delta_loss:
    name: delta_loss
    params:
      cache_dir: ../dataflex_saves/delta_loss_output
      window_size: 0.2

mixers:
  random:
    name: random
    params:
      seed: 42

weighters:
  loss:
    name: loss
    params:
      strategy: linupper # choices: [linupper, uniform, quadratic, extremes]
      delta: 1.0
"""


def rows(n, lang):
    return [{"instruction": f"{lang} question {i}", "input": "", "output": f"answer {i}"}
            for i in range(n)]  # fmt: skip


@pytest.fixture
def dataflex_checkout(tmp_path):
    """DataFlex's layout: the components file under src/dataflex/configs, LLaMA-Factory's
    data/dataset_info.json naming the two demo datasets, a local model folder."""
    (tmp_path / "src/dataflex/configs").mkdir(parents=True)
    (tmp_path / "src/dataflex/configs/components.yaml").write_text(DATAFLEX_COMPONENTS_YAML)
    data = tmp_path / "data"
    data.mkdir()
    (data / "alpaca_en_demo.json").write_text(json.dumps(rows(64, "en")))
    (data / "alpaca_zh_demo.json").write_text(json.dumps(rows(8, "zh")))
    info = {name: {"file_name": f"{name}.json"} for name in ("alpaca_en_demo", "alpaca_zh_demo")}
    (data / "dataset_info.json").write_text(json.dumps(info))
    (tmp_path / "Llama-3.1-8B").mkdir()
    (tmp_path / "Llama-3.1-8B/config.json").write_text("{}")
    text = DATAFLEX_DELTA_LOSS_YAML.replace(
        "model_name_or_path: meta-llama/Llama-3.1-8B",
        f"model_name_or_path: {tmp_path / 'Llama-3.1-8B'}",
    ).replace("output_dir: ../dataflex_saves/Llama-3.1-8B/delta_loss",
              f"output_dir: {tmp_path / 'saves'}")  # fmt: skip
    (tmp_path / "delta_loss.yaml").write_text(text)
    return tmp_path


def test_dataflex_110s_example_and_components_file_are_read_as_they_are(
    dataflex_checkout, monkeypatch
):
    monkeypatch.chdir(dataflex_checkout)  # DataFlex's paths are relative to its checkout
    loaded = load_config(dataflex_checkout / "delta_loss.yaml")
    cfg = loaded.config
    assert loaded.window_size == 0.2  # selectors: delta_loss: params: window_size
    assert (cfg.component_name, cfg.train_type) == ("delta_loss", "dynamic_select")
    assert (cfg.warmup_step, cfg.update_step, cfg.update_times) == (10, 10, 2)
    assert (cfg.template, cfg.lora_rank, cfg.lora_alpha) == ("llama3", 16, 8)
    assert len(loaded.samples) == 64 and loaded.eval_samples is not None
    assert len(loaded.eval_samples) == 8


def components(tmp_path, body):
    path = tmp_path / "components.yaml"
    path.write_text(yaml.safe_dump(body))
    return str(path)


def settings(tmp_path, demo_file, components_file):
    (tmp_path / "model").mkdir(exist_ok=True)
    (tmp_path / "model/config.json").write_text("{}")
    return dict(
        model_name_or_path=str(tmp_path / "model"),
        dataset=str(demo_file),
        output_dir=str(tmp_path / "out"),
        warmup_step=2,
        update_step=2,
        update_times=3,
        components_cfg_file=components_file,
        component_name="delta_loss",
    )


def test_the_seeds_flat_components_layout_is_read_too(tmp_path, demo_file):
    flat = components(tmp_path, {"delta_loss": {"name": "delta_loss",
                                                "params": {"window_size": 0.35}}})  # fmt: skip
    assert parse_config(settings(tmp_path, demo_file, flat)).window_size == 0.35


def test_a_components_file_without_the_entry_lists_what_it_has(tmp_path, demo_file):
    only_others = components(tmp_path, {"selectors": {"less": {"params": {}},
                                                      "loss": {"params": {}}}})  # fmt: skip
    with pytest.raises(ConfigError) as info:
        parse_config(settings(tmp_path, demo_file, only_others))
    message = info.value.problems["component_name"]
    assert "has no entry 'delta_loss' under selectors: or at its top level" in message
    assert "(it lists less, loss)" in message
    assert "selectors: {delta_loss: {name: delta_loss, params: {window_size: 0.2}}}" in message


def test_an_entry_under_another_kind_of_component_is_named(tmp_path, demo_file):
    misplaced = components(tmp_path, {"weighters": {"delta_loss": {"params": {}}}})
    with pytest.raises(ConfigError) as info:
        parse_config(settings(tmp_path, demo_file, misplaced))
    assert (
        "lists 'delta_loss' under weighters:, not selectors:"
        in (info.value.problems["component_name"])
    )


@pytest.mark.parametrize("template", ["qwen3", "llama2", "deepseek3"])
def test_a_llama_factory_template_not_built_in_points_at_auto(tmp_path, demo_file, template):
    raw = settings(tmp_path, demo_file, None) | {"template": template}
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    message = info.value.problems["template"]
    assert message.startswith(f"'{template}' is not a template this tool builds in; use auto")
    assert "the tokenizer's own chat template" in message
