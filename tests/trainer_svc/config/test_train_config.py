"""Config validation: defaults, the components file, one error naming every bad key."""

import importlib.util
import json
import logging

import pytest
import torch
import yaml

from trainer_svc.config.train_config import (
    ConfigError,
    load_config,
    parse_config,
    resolve_base_model,
)
from trainer_svc.training.selection import model_spec


def model_folder(tmp_path):
    """A folder that reads as a model (its config.json); no weights are loaded here."""
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text("{}")
    return folder


def base(demo_file, tmp_path, **over):
    raw = dict(
        model_name_or_path=str(model_folder(tmp_path)),
        dataset=str(demo_file),
        output_dir=str(tmp_path / "out"),
        warmup_step=2,
        update_step=2,
        update_times=3,
    )
    raw.update(over)
    return raw


def test_defaults_and_derived_values(demo_file, tmp_path):
    loaded = parse_config(
        base(demo_file, tmp_path, per_device_train_batch_size=2, gradient_accumulation_steps=3)
    )
    cfg = loaded.config
    assert cfg.selection_mode == "sync" and cfg.on_scorer_failure == "fail"
    assert cfg.scorer_zmq_url == "tcp://127.0.0.1:5555"
    assert cfg.scorer_http_url == "http://127.0.0.1:8000"
    assert cfg.target_modules == "all-linear"
    assert cfg.alpha == 2 * cfg.lora_rank
    assert loaded.window_size == 0.2 and loaded.batch == 6 and len(loaded.samples) == 32


def test_comma_lora_target_becomes_a_list(demo_file, tmp_path):
    cfg = parse_config(base(demo_file, tmp_path, lora_target="q_proj, v_proj")).config
    assert cfg.target_modules == ["q_proj", "v_proj"]


def installed(tmp_path, monkeypatch, *modules):
    """Makes each module importable (an empty package), as if its tracker were installed."""
    for module in modules:
        (tmp_path / "site" / module).mkdir(parents=True)
        (tmp_path / "site" / module / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))


def test_comma_report_to_becomes_a_list_for_training_arguments(demo_file, tmp_path, monkeypatch):
    from transformers import TrainingArguments

    installed(tmp_path, monkeypatch, "tensorboard", "wandb")
    cfg = parse_config(base(demo_file, tmp_path, report_to=" tensorboard, wandb ,")).config
    assert cfg.report_to == ["tensorboard", "wandb"]
    assert parse_config(base(demo_file, tmp_path, report_to=["tensorboard"])).config.report_to == [
        "tensorboard"
    ]
    for none in ("none", ["none"], None):
        assert parse_config(base(demo_file, tmp_path, report_to=none)).config.report_to == []
    assert parse_config(base(demo_file, tmp_path)).config.report_to == []
    assert parse_config(base(demo_file, tmp_path, report_to="all")).config.report_to == ["all"]
    for report_to in (cfg.report_to, []):  # as the recipe hands them on
        args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=report_to)
        assert args.report_to == report_to


@pytest.mark.parametrize(("tracker", "package"), [("swanlab", "swanlab"), ("wandb", "wandb")])
def test_a_tracker_not_installed_is_refused_naming_its_package(
    demo_file, tmp_path, tracker, package
):
    if importlib.util.find_spec(package) is not None:
        pytest.skip(f"{package} is installed here")
    with pytest.raises(ConfigError) as info:
        parse_config(base(demo_file, tmp_path, report_to=f"tensorboard,{tracker}", update_step=0))
    assert set(info.value.problems) == {"report_to", "update_step"}  # with the others, at once
    assert f"pip install {package}" in info.value.problems["report_to"]


@pytest.mark.parametrize(
    ("report_to", "message"),
    [
        ("tensorbaord", "did you mean tensorboard?"),
        (["tensorboard", "sheets"], "'sheets' is not a tracker"),
        ("none,tensorboard", "'none' and 'all' stand alone"),
        ("all, wandb", "'none' and 'all' stand alone"),
        ([3], "valid string"),
    ],
)
def test_an_unknown_tracker_is_refused_naming_the_accepted_ones(
    demo_file, tmp_path, report_to, message
):
    with pytest.raises(ConfigError) as info:
        parse_config(base(demo_file, tmp_path, report_to=report_to))
    problem = info.value.problems["report_to"]
    assert message in problem
    if "not a tracker" in message:
        assert "give none, all, or trackers among tensorboard, wandb, mlflow, swanlab" in problem


def test_unknown_keys_are_refused_with_the_nearest_known_key(demo_file, tmp_path):
    raw = base(
        demo_file, tmp_path, lora_rnak=8, enable_liger_kernel=True, warmup_steps=5, max_steps=9
    )
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    problems = info.value.problems
    assert set(problems) == {"lora_rnak", "enable_liger_kernel", "warmup_steps", "max_steps"}
    assert "did you mean lora_rank?" in problems["lora_rnak"]
    assert "not a key this tool reads: remove it" in problems["enable_liger_kernel"]
    assert "trainer-svc keys lists the keys" in problems["enable_liger_kernel"]
    # keys that mean something else here get the key that means it, not the nearest name
    assert "warmup_ratio" in problems["warmup_steps"] and "did you" not in problems["warmup_steps"]
    assert "give train_step" in problems["max_steps"]


def test_keys_without_effect_here_are_accepted_and_said_so(demo_file, tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        parse_config(base(demo_file, tmp_path, overwrite_cache=True, train_step=3))
    assert "overwrite_cache has no effect here: tokenization is not cached" in caplog.text
    assert "train_step is 3" not in caplog.text  # num_train_epochs is 1: nothing is ignored
    with caplog.at_level(logging.WARNING):
        parse_config(base(demo_file, tmp_path, train_step=3, num_train_epochs=2))
    assert "num_train_epochs (2) is ignored" in caplog.text


def test_a_hub_id_must_be_in_the_local_cache(demo_file, tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ConfigError) as info:
        parse_config(base(demo_file, tmp_path, model_name_or_path="org/absent-model"))
    message = info.value.problems["model_name_or_path"]
    assert "neither a local model folder nor in the Hugging Face cache" in message
    assert "hf download org/absent-model" in message
    # the same id once in the cache: both services load its snapshot folder
    snapshot = tmp_path / "hub" / "models--org--cached-model" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "hub" / "models--org--cached-model" / "refs").mkdir()
    (tmp_path / "hub" / "models--org--cached-model" / "refs" / "main").write_text("abc123")
    loaded = parse_config(base(demo_file, tmp_path, model_name_or_path="org/cached-model"))
    assert resolve_base_model(loaded.config.model_name_or_path) == str(snapshot)
    assert model_spec(loaded.config).base_model == str(snapshot)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for a machine without GPU")
def test_keys_that_need_a_gpu_are_refused_on_a_cpu_machine(demo_file, tmp_path):
    with pytest.raises(ConfigError) as info:
        parse_config(base(demo_file, tmp_path, quantization_bit=4, flash_attn="fa2"))
    problems = info.value.problems
    assert "4-bit quantization (bitsandbytes) needs a CUDA GPU" in problems["quantization_bit"]
    assert "flash_attention_2 needs a CUDA GPU" in problems["flash_attn"]
    with pytest.raises(ConfigError) as info:
        parse_config(base(demo_file, tmp_path, quantization_bit=8, finetuning_type="full"))
    assert "LoRA adapters only" in info.value.problems["quantization_bit"]
    with pytest.raises(ConfigError) as info:
        parse_config(base(demo_file, tmp_path, quantization_bit=3, quantization_method="gptq"))
    assert set(info.value.problems) == {"quantization_bit", "quantization_method"}


def test_full_finetuning_with_flash_attention_needs_a_half_precision(demo_file, tmp_path):
    """Its weights are float32 masters: without bf16/fp16 autocast flash attention would be
    handed float32 at the first step."""
    with pytest.raises(ConfigError) as info:
        parse_config(base(demo_file, tmp_path, finetuning_type="full", flash_attn="fa2"))
    assert "set bf16: true" in info.value.problems["bf16"]
    for ok in ({"bf16": True}, {"pure_bf16": True}, {"finetuning_type": "lora"}):
        keys = {"finetuning_type": "full", "flash_attn": "fa2", **ok}
        try:  # refused where there is no GPU or no flash-attn package, for that alone
            parse_config(base(demo_file, tmp_path, **keys))
        except ConfigError as error:
            assert set(error.problems) == {"flash_attn"}


def test_pure_bf16_goes_with_bf16_not_fp16(demo_file, tmp_path):
    with pytest.raises(ConfigError) as info:
        parse_config(base(demo_file, tmp_path, pure_bf16=True, fp16=True))
    assert "use it with bf16, not fp16" in info.value.problems["pure_bf16"]
    assert parse_config(base(demo_file, tmp_path, pure_bf16=True, bf16=True)).config.pure_bf16


def test_attention_reaches_the_model_spec(demo_file, tmp_path):
    for value, implementation in (("auto", None), ("disabled", "eager"), ("sdpa", "sdpa")):
        cfg = parse_config(base(demo_file, tmp_path, flash_attn=value)).config
        assert model_spec(cfg).attn_implementation == implementation


@pytest.mark.parametrize(
    ("over", "key", "message"),
    [
        ({"packing": True}, "packing", "packing is not supported"),
        ({"neat_packing": True}, "neat_packing", "packing is not supported"),
        ({"val_size": 0.1, "eval_dataset": "x.json"}, "val_size", "not both"),
        ({"load_best_model_at_end": True}, "load_best_model_at_end", "needs eval_dataset"),
        (
            {"load_best_model_at_end": True, "val_size": 4},
            "load_best_model_at_end",
            "needs eval_steps",
        ),
        (
            {"load_best_model_at_end": True, "val_size": 4, "eval_strategy": "no"},
            "load_best_model_at_end",
            "eval_strategy is 'no'",
        ),
        ({"eval_strategy": "epoch"}, "eval_strategy", "'no' or 'steps'"),
    ],
)
def test_data_and_evaluation_keys_this_tool_cannot_honour(demo_file, tmp_path, over, key, message):
    with pytest.raises(ConfigError) as info:
        parse_config(base(demo_file, tmp_path, **over))
    assert message in info.value.problems[key]


def test_every_bad_key_is_named_in_one_error(demo_file, tmp_path):
    raw = base(
        demo_file,
        tmp_path,
        update_step=0,
        selection_mode="later",
        lora_rank="x",
        finetuning_type="qlora",
        template="nope",
        dataloader_num_workers=4,
    )
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert set(info.value.problems) == {
        "update_step",
        "selection_mode",
        "lora_rank",
        "finetuning_type",
        "template",
        "dataloader_num_workers",
    }


def test_segments_larger_than_the_dataset(demo_file, tmp_path):
    # 32 samples; B = 8: warmup 5 x 8 = 40 and update 8 x 8 = 64 are too many
    raw = base(demo_file, tmp_path, per_device_train_batch_size=8, warmup_step=5, update_step=8)
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert set(info.value.problems) == {"warmup_step", "update_step"}
    assert "40" in info.value.problems["warmup_step"]


def test_missing_dataset_and_required_keys(tmp_path):
    with pytest.raises(ConfigError) as info:
        parse_config({"dataset": str(tmp_path / "none.json")})
    assert {"model_name_or_path", "output_dir", "dataset"} <= set(info.value.problems)


def write_components(tmp_path, window):
    path = tmp_path / "components.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "delta_loss": {
                    "name": "delta_loss",
                    "params": {"cache_dir": "x", "window_size": window},
                }
            }
        )
    )
    return path


def test_window_size_comes_from_the_components_file(demo_file, tmp_path):
    comp = write_components(tmp_path, 0.3)
    loaded = parse_config(
        base(demo_file, tmp_path, components_cfg_file=str(comp), component_name="delta_loss")
    )
    assert loaded.window_size == 0.3


def test_window_size_outside_unit_interval_is_named_with_other_errors(demo_file, tmp_path):
    comp = write_components(tmp_path, 1.5)
    with pytest.raises(ConfigError) as info:
        parse_config(base(demo_file, tmp_path, components_cfg_file=str(comp), update_times=0))
    assert set(info.value.problems) == {"window_size", "update_times"}


def test_load_config_applies_overrides_and_resolves_relative_files(demo_file, tmp_path):
    write_components(tmp_path, 0.1)
    path = tmp_path / "run.yaml"
    path.write_text(
        yaml.safe_dump(base(demo_file, tmp_path, components_cfg_file="components.yaml"))
    )
    loaded = load_config(path, ["selection_mode=async", "scorer_wait_seconds=5"])
    assert loaded.config.selection_mode == "async" and loaded.config.scorer_wait_seconds == 5
    assert loaded.window_size == 0.1


def test_an_existing_run_needs_overwrite(demo_file, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "selections.jsonl").write_text("")
    with pytest.raises(ConfigError) as info:
        parse_config(base(demo_file, tmp_path))
    assert set(info.value.problems) == {"overwrite_output_dir"}
    parse_config(base(demo_file, tmp_path, overwrite_output_dir=True))


def test_eval_steps_needs_an_eval_dataset(demo_file, tmp_path):
    with pytest.raises(ConfigError) as info:
        parse_config(base(demo_file, tmp_path, eval_steps=5))
    assert set(info.value.problems) == {"eval_steps"}
    loaded = parse_config(base(demo_file, tmp_path, eval_steps=5, eval_dataset=str(demo_file)))
    assert loaded.config.eval_steps == 5 and len(loaded.eval_samples) == 32


def test_scorer_token_comes_from_the_environment_when_unset(demo_file, tmp_path, monkeypatch):
    monkeypatch.setenv("SCORER_TOKEN", "from-env")
    assert parse_config(base(demo_file, tmp_path)).config.scorer_token == "from-env"
    configured = parse_config(base(demo_file, tmp_path, scorer_token="from-yaml"))
    assert configured.config.scorer_token == "from-yaml"
    monkeypatch.delenv("SCORER_TOKEN")
    assert parse_config(base(demo_file, tmp_path)).config.scorer_token is None


def test_scorer_token_file_is_read_when_no_token_is_given(demo_file, tmp_path, monkeypatch):
    monkeypatch.delenv("SCORER_TOKEN", raising=False)
    secret = tmp_path / "token"
    secret.write_text("from-file\n")
    monkeypatch.setenv("SCORER_TOKEN_FILE", str(secret))
    assert parse_config(base(demo_file, tmp_path)).config.scorer_token == "from-file"
    monkeypatch.setenv("SCORER_TOKEN", "from-env")  # the variable itself wins
    assert parse_config(base(demo_file, tmp_path)).config.scorer_token == "from-env"
    monkeypatch.delenv("SCORER_TOKEN")
    for bad, said in ((tmp_path / "missing", "cannot be read"), (tmp_path / "empty", "is empty")):
        if bad.name == "empty":
            bad.write_text("  \n")
        monkeypatch.setenv("SCORER_TOKEN_FILE", str(bad))
        with pytest.raises(ConfigError) as info:
            parse_config(base(demo_file, tmp_path))
        assert said in info.value.problems["scorer_token"]


def test_an_output_dir_that_cannot_be_made_is_named(demo_file, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ConfigError) as info:
        parse_config(base(demo_file, tmp_path, output_dir=str(blocker / "run")))
    assert set(info.value.problems) == {"output_dir"}
    assert f"{blocker} is not a folder" in info.value.problems["output_dir"]
    parse_config(base(demo_file, tmp_path, output_dir=str(tmp_path / "new" / "run")))


def test_bad_values_are_named_with_what_to_use(demo_file, tmp_path):
    raw = base(
        demo_file,
        tmp_path,
        scorer_zmq_url="http://127.0.0.1:5555",
        scorer_http_url="tcp://127.0.0.1:8000",
        lr_scheduler_type="sometimes",
        scorer_curve_secret_key_file=str(tmp_path / "missing.key_secret"),
    )
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    problems = info.value.problems
    assert set(problems) == {
        "scorer_zmq_url",
        "scorer_http_url",
        "lr_scheduler_type",
        "scorer_curve_secret_key_file",
    }
    assert "not a ZeroMQ endpoint: use tcp://HOST:PORT" in problems["scorer_zmq_url"]
    assert "http://127.0.0.1:8000" in problems["scorer_http_url"]
    assert "does not exist" in problems["scorer_curve_secret_key_file"]


def test_combinations_and_segment_sizes_are_named_together(demo_file, tmp_path):
    key = tmp_path / "trainer.key_secret"
    key.write_text("")
    raw = base(
        demo_file,
        tmp_path,
        bf16=True,
        fp16=True,
        lora_target=" , ",
        scorer_curve_secret_key_file=str(key),
        warmup_step=40,
    )
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert set(info.value.problems) == {
        "fp16",
        "lora_target",
        "scorer_curve_server_key_file",
        "warmup_step",
    }
    assert "needs both" in info.value.problems["scorer_curve_server_key_file"]


def test_keys_bad_alone_and_keys_bad_together_are_named_in_one_error(demo_file, tmp_path):
    raw = base(demo_file, tmp_path, learning_rate="fast", bf16=True, fp16=True, warmup_step=40)
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert set(info.value.problems) == {"learning_rate", "fp16", "warmup_step"}


def test_a_missing_required_key_does_not_hide_the_others(demo_file, tmp_path):
    raw = base(demo_file, tmp_path, bf16=True, fp16=True)
    del raw["output_dir"]
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert set(info.value.problems) == {"output_dir", "fp16"}


def test_a_run_id_that_could_leave_its_folder_is_named(demo_file, tmp_path):
    with pytest.raises(ConfigError) as info:
        parse_config(base(demo_file, tmp_path, run_id="../other"))
    assert set(info.value.problems) == {"run_id"} and "'..'" in info.value.problems["run_id"]


@pytest.mark.parametrize(
    ("name", "stem"),
    [("out", "out"), (".hidden", "hidden"), ("résumé..v2", "r-sum---v2"), ("__", "run")],
)
def test_a_run_id_derived_from_any_folder_name_is_allowed(name, stem):
    from common.validation import check_run_id
    from trainer_svc.training.selection import run_stem

    assert run_stem(name) == stem
    check_run_id(f"{run_stem(name)}-20260101-000000-abcd")


def test_malformed_yaml_is_one_clear_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model_name_or_path: [unclosed\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(path)
    path.write_text("dataset: x.json\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path, ["lora_rank=[1"])


def test_a_missing_local_base_model_is_named_with_the_others(demo_file, tmp_path):
    raw = base(
        demo_file, tmp_path, model_name_or_path=str(tmp_path / "no-model"), bf16=True, fp16=True
    )
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert set(info.value.problems) == {"model_name_or_path", "fp16"}
    assert "does not exist" in info.value.problems["model_name_or_path"]


def test_the_cli_says_what_is_wrong_in_one_line_and_exits_2(tmp_path, caplog):
    from trainer_svc.cli import main

    path = tmp_path / "bad.yaml"
    path.write_text("a: [\n")
    assert main(["train", str(path)]) == 2
    assert "is not valid YAML" in caplog.text and "Traceback" not in caplog.text


@pytest.mark.parametrize(
    "key, value",
    [
        ("lora_rank", 2_000_000),
        ("lora_alpha", float("inf")),
        ("update_times", 10**9),
        ("lora_target", ",".join(["q_proj"] * 300)),
    ],
)
def test_values_the_scorer_would_refuse_are_config_errors(demo_file, tmp_path, key, value):
    with pytest.raises(ConfigError) as info:
        parse_config(base(demo_file, tmp_path, **{key: value}))
    assert key in info.value.problems


def test_fsdp_is_refused_not_ignored(demo_file, tmp_path):
    with pytest.raises(ConfigError) as info:
        parse_config(base(demo_file, tmp_path, fsdp="full_shard"))
    assert "DDP under torchrun" in info.value.problems["fsdp"]


def test_deepspeed_is_refused_by_name_unless_it_can_be_honoured(demo_file, tmp_path, monkeypatch):
    ds = tmp_path / "ds.json"
    ds.write_text('{"zero_optimization": {"stage": 3}}')
    with pytest.raises(ConfigError) as info:
        parse_config(base(demo_file, tmp_path, deepspeed=str(ds)))
    if importlib.util.find_spec("deepspeed") is None:
        assert "DeepSpeed is not installed" in info.value.problems["deepspeed"]
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
        with pytest.raises(ConfigError) as info:
            parse_config(base(demo_file, tmp_path, deepspeed=str(ds)))
    assert "ZeRO stage 3" in info.value.problems["deepspeed"]
    ds.write_text('{"zero_optimization": {"stage": 2}}')
    assert parse_config(base(demo_file, tmp_path, deepspeed=str(ds))).deepspeed == ds.resolve()


def test_under_torchrun_ddp_timeout_must_outlast_the_scorer_wait(demo_file, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError) as info:
        parse_config(base(demo_file, tmp_path, ddp_timeout=1000, scorer_wait_seconds=600))
    assert "above 1320" in info.value.problems["ddp_timeout"]
    loaded = parse_config(base(demo_file, tmp_path, ddp_timeout=1800, scorer_wait_seconds=600))
    assert loaded.world_size == 2


@pytest.mark.parametrize(("budget", "kept"), [(0.1, 0.1), (1, 1.0), (500, 500.0)])
def test_the_scoring_budget_is_a_fraction_or_a_count(demo_file, tmp_path, budget, kept):
    assert parse_config(base(demo_file, tmp_path, score_budget=budget)).config.score_budget == kept
    assert parse_config(base(demo_file, tmp_path)).config.score_budget == 1.0  # the method's


@pytest.mark.parametrize("budget", [0, -0.5, 2.5, ".nan"])
def test_a_scoring_budget_that_means_nothing_is_refused_saying_what_to_give(
    demo_file, tmp_path, budget
):
    with pytest.raises(ConfigError) as info:
        parse_config(base(demo_file, tmp_path, score_budget=budget))
    assert "score_budget" in str(info.value)


def test_a_run_name_and_tags_are_read_and_bounded(demo_file, tmp_path):
    tags = {"team": "nlp", "data/source": "alpaca en"}
    cfg = parse_config(base(demo_file, tmp_path, run_name="qwen 20%", tags=tags)).config
    assert (cfg.run_name, cfg.tags) == ("qwen 20%", tags)
    assert parse_config(base(demo_file, tmp_path)).config.tags == {}
    with pytest.raises(ConfigError) as info:
        parse_config(base(demo_file, tmp_path, run_name="", tags={"a=b": "x"}))
    assert set(info.value.problems) == {"run_name", "tags"}
    with pytest.raises(ConfigError) as info:
        parse_config(base(demo_file, tmp_path, tags={f"k{i}": "v" for i in range(65)}))
    assert "tags" in info.value.problems


def fsdp_run(demo_file, tmp_path, **over):
    """Full fine-tuning with FSDP, and the keys in over."""
    return base(demo_file, tmp_path, **{"finetuning_type": "full", "fsdp": "full_shard", **over})


def test_fsdp_is_taken_for_full_fine_tuning_under_torchrun(demo_file, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    loaded = parse_config(fsdp_run(demo_file, tmp_path, fsdp_config={"cpu_offload": False}))
    assert loaded.config.fsdp == "full_shard"
    assert loaded.fsdp_config == {"cpu_offload": False}
    as_list = parse_config(fsdp_run(demo_file, tmp_path, fsdp=["full_shard", "offload"]))
    assert as_list.config.fsdp == ["full_shard", "offload"] and as_list.fsdp_config is None
    assert parse_config(fsdp_run(demo_file, tmp_path, fsdp=True)).config.fsdp is True


@pytest.mark.parametrize("suffix", ["json", "yaml"])
def test_fsdp_config_may_be_a_json_or_yaml_file(demo_file, tmp_path, monkeypatch, suffix):
    monkeypatch.setenv("WORLD_SIZE", "2")
    settings = {"fsdp_reshard_after_forward": False, "transformer_layer_cls_to_wrap": ["X"]}
    path = tmp_path / f"fsdp.{suffix}"
    path.write_text(yaml.safe_dump(settings) if suffix == "yaml" else json.dumps(settings))
    assert parse_config(fsdp_run(demo_file, tmp_path, fsdp_config=str(path))).fsdp_config == (
        settings
    )
    path.write_text("- a list\n")
    with pytest.raises(ConfigError) as info:
        parse_config(fsdp_run(demo_file, tmp_path, fsdp_config=str(path)))
    assert "must hold a mapping" in info.value.problems["fsdp_config"]
    with pytest.raises(ConfigError) as info:
        parse_config(fsdp_run(demo_file, tmp_path, fsdp_config=str(tmp_path / "none.json")))
    assert "does not exist" in info.value.problems["fsdp_config"]


def test_fsdp_with_lora_is_refused_saying_why(demo_file, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError) as info:
        parse_config(fsdp_run(demo_file, tmp_path, finetuning_type="lora"))
    said = info.value.problems["fsdp"]
    assert "finetuning_type: full only" in said and "LoRA" in said and "DDP" in said


def test_fsdp_in_one_process_is_refused(demo_file, tmp_path, monkeypatch):
    with pytest.raises(ConfigError) as info:
        parse_config(fsdp_run(demo_file, tmp_path))
    assert "this run has one" in info.value.problems["fsdp"]
    # checked before FORCE_TORCHRUN starts torchrun: the processes it will start
    monkeypatch.setenv("FORCE_TORCHRUN", "1")
    monkeypatch.setenv("NPROC_PER_NODE", "2")
    assert parse_config(fsdp_run(demo_file, tmp_path)).world_size == 1
    monkeypatch.setenv("NPROC_PER_NODE", "1")
    with pytest.raises(ConfigError) as info:
        parse_config(fsdp_run(demo_file, tmp_path))
    assert "torchrun with several" in info.value.problems["fsdp"]


@pytest.mark.parametrize(
    ("over", "key", "said"),
    [
        ({"fsdp": None, "fsdp_config": {"cpu_offload": True}}, "fsdp_config", "without fsdp"),
        ({"fsdp": "hybrid_shard"}, "fsdp", "not an FSDP2 option"),
        ({"fsdp_config": {"version": 1}}, "fsdp_config", "version 2"),
        ({"fsdp_config": {"sync_module_states": True}}, "fsdp_config", "not FSDP2 settings"),
        ({"fsdp_config": {"state_dict_type": "SHARDED_STATE_DICT"}}, "fsdp_config", "FULL_"),
        (
            {"fsdp_config": {"activation_checkpointing": True}, "gradient_checkpointing": True},
            "fsdp_config",
            "cannot both be set",
        ),
    ],
)
def test_fsdp_settings_it_would_not_honour_are_refused(
    demo_file, tmp_path, monkeypatch, over, key, said
):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError) as info:
        parse_config(fsdp_run(demo_file, tmp_path, **over))
    assert said in info.value.problems[key]


def test_deepspeed_zero_3_is_refused_pointing_at_fsdp(demo_file, tmp_path, monkeypatch):
    ds = tmp_path / "ds.json"
    ds.write_text('{"zero_optimization": {"stage": 3}}')
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    with pytest.raises(ConfigError) as info:
        parse_config(base(demo_file, tmp_path, deepspeed=str(ds)))
    said = info.value.problems["deepspeed"]
    assert "needs them whole" in said and "gather is not wired" in said and "fsdp" in said
