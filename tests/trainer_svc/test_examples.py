"""The seed's YAML files in examples/ run with only local paths (and the scorer) swapped in."""

import subprocess
import sys

import pytest

from delta_loss_devtools.demo_data import write_dataset
from tests.conftest import ROOT
from trainer_svc.config.train_config import load_config
from trainer_svc.training.records import read_jsonl


def local(tiny_model, data, out):
    return [
        f"model_name_or_path={tiny_model}",
        f"dataset={data}",
        f"eval_dataset={data}",
        f"output_dir={out}",
    ]


def test_seed_yaml_parses_with_the_seed_values(tiny_model, tmp_path):
    data = write_dataset(tmp_path / "d.json", n=40)
    loaded = load_config(ROOT / "examples" / "delta_loss.yaml", local(tiny_model, data, tmp_path))
    cfg = loaded.config
    assert (cfg.lora_rank, cfg.lora_alpha, cfg.warmup_step, cfg.update_step) == (16, 8, 10, 10)
    assert cfg.target_modules == "all-linear" and loaded.window_size == 0.2
    assert cfg.bf16 and cfg.template == "llama3" and cfg.cutoff_len == 4096
    assert (cfg.eval_strategy, cfg.eval_steps, cfg.metric_for_best_model) == (
        "steps",
        10,
        "eval_loss",
    )
    assert cfg.greater_is_better is False and cfg.per_device_eval_batch_size == 1


def test_demo_yaml_parses(tiny_model, tmp_path):
    data = write_dataset(tmp_path / "d.json", n=320)
    loaded = load_config(
        ROOT / "delta_loss_devtools" / "demo.yaml", local(tiny_model, data, tmp_path)[:3]
    )
    assert loaded.config.update_times == 5 and loaded.batch == 4
    assert loaded.eval_dataset.names == str(data.resolve())


@pytest.mark.slow
def test_seed_yaml_trains_against_the_real_scorer(tiny_model, scorer, tmp_path):
    data = write_dataset(tmp_path / "d.json", n=32)
    out = tmp_path / "out"
    overrides = local(tiny_model, data, out) + [
        f"scorer_zmq_url={scorer.zmq_url}",
        f"scorer_http_url={scorer.base_url}",
        "scorer_wait_seconds=120",
    ]
    cmd = [sys.executable, "-m", "trainer_svc", "train", "examples/delta_loss.yaml", *overrides]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=500)
    assert done.returncode == 0, done.stderr[-4000:] + scorer.log()[-3000:]
    rows = read_jsonl(out / "selections.jsonl")
    assert [(r["global_step"], r["update_index"], r["weights_step"]) for r in rows] == [
        (10, 1, 10),
        (20, 2, 20),
    ]
    assert (out / "adapter_model.safetensors").is_file() and (out / "training_loss.png").is_file()
