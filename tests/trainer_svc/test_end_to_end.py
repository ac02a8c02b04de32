"""Trainer and scorer for real on loopback: `trainer-svc train` against `scorer_svc serve`."""

import json

import httpx
import matplotlib.image
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from common.api.client import ScorerApi
from tests.support.scorer import checkpoints, settled_checkpoints
from tests.support.trainer import (
    RUN_SAMPLES,
    TrainerProcess,
    run_trainer,
    scorer_keys,
    write_config,
)
from trainer_svc.cli import main as cli_main
from trainer_svc.training.records import read_jsonl
from trainer_svc.training.schedule import draw_warmup, training_order

pytestmark = pytest.mark.slow

N, B = RUN_SAMPLES, 4


def expected_draw(scorer, run_id, row):
    count = B * 2
    if row["update_index"] == 1:
        seed = 42 if row["epoch"] == 0 else 42 + row["global_step"]
        return torch.randperm(N, generator=torch.Generator().manual_seed(seed))[:count].tolist()
    if row["weights_step"] is None:
        weights = torch.full((N,), 1.0 / N, dtype=torch.float64)
    else:
        body = httpx.get(
            f"{scorer.base_url}/v1/runs/{run_id}/weights", params={"step": row["weights_step"]}
        ).json()
        assert body["step"] == row["weights_step"]
        weights = torch.tensor(body["weights"], dtype=torch.float64)
    g = torch.Generator().manual_seed(42 + row["global_step"])
    replace = count > int((weights > 0).sum())
    return torch.multinomial(weights, count, replacement=replace, generator=g).tolist()


def check_run(tiny_model, scorer, out, run_id, *, mode="sync"):
    """mode async: step 4 may have been superseded by step 6 while it waited (newest first)."""
    checkpoints = settled_checkpoints(scorer, run_id, 3)
    middle = {"scored", "superseded"} if mode == "async" else {"scored"}
    assert [(c["step"], c["update_index"]) for c in checkpoints] == [(2, 1), (4, 2), (6, 3)]
    statuses = [c["status"] for c in checkpoints]
    assert statuses[0] == statuses[2] == "scored" and statuses[1] in middle
    rows = read_jsonl(out / "selections.jsonl")
    assert [(r["epoch"], r["update_index"], r["global_step"]) for r in rows] == [
        (0, 1, 2),
        (0, 2, 4),
        (0, 3, 6),
    ]
    trained = {r["step"]: r["indices"] for r in read_jsonl(out / "trained_samples.jsonl")}
    assert sorted(trained) == list(range(8))
    assert trained[0] + trained[1] == training_order(draw_warmup(N, B * 2), 42).tolist()
    for row in rows:
        assert row["sampled_indices"] == expected_draw(scorer, run_id, row)
        s = row["global_step"]
        drawn = torch.tensor(row["sampled_indices"])
        assert trained[s] + trained[s + 1] == training_order(drawn, 42).tolist()
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), out)
    assert (out / "training_loss.png").is_file()
    return rows


def test_sync_run_trains_on_the_scorers_selection(tiny_model, scorer, tmp_path):
    out, run_id = run_trainer(tiny_model, scorer, tmp_path, "sync")
    rows = check_run(tiny_model, scorer, out, run_id)
    assert [r["weights_step"] for r in rows] == [2, 4, 6]
    assert [r["window"] is None for r in rows] == [True, False, False]
    with ScorerApi(scorer.base_url) as api:  # the trainer told the scorer the run finished
        run = api.run(run_id)
        stored_losses = api.all_metric_history(run_id, "loss")  # and what it logged
    assert (run.status, run.last_scored_step) == ("finished", 6)
    state = json.loads((out / "trainer_state.json").read_text())
    logged = [(row["step"], row["loss"]) for row in state["log_history"] if "loss" in row]
    assert logged and [(h.step, h.value) for h in stored_losses] == logged
    assert run.end_detail is not None and run.end_detail.startswith("trained ")
    # the run's report, its loss reductions read back from the scorer
    assert cli_main(["report", str(out), "--scorer", scorer.base_url]) == 0
    drawn = sorted(p.name for p in (out / "report").glob("*.png"))
    assert drawn == [
        "deltas_step_2.png", "deltas_step_4.png", "deltas_step_6.png", "draw_counts.png",
        "training_loss.png", "trajectories.png", "window.png",
    ]  # fmt: skip
    page = (out / "report" / "index.html").read_text()
    assert all(f'src="{name}"' in page for name in drawn)
    assert all(matplotlib.image.imread(p).shape[1] == 700 for p in (out / "report").glob("*.png"))


def test_a_budgeted_run_trains_on_the_weights_of_its_estimates(tiny_model, scorer, tmp_path):
    """score_budget 0.25 of 64 samples: updates 1 and 2 are scored in full, update 3 measures
    16; the trainer draws from the weights served and records how much was measured."""
    tags = {"team": "nlp", "budget": "quarter"}
    out, run_id = run_trainer(
        tiny_model, scorer, tmp_path, "sync", score_budget=0.25, run_name="a quarter", tags=tags
    )
    rows = check_run(tiny_model, scorer, out, run_id)
    assert [r["n_measured"] for r in rows] == [None, None, 16]
    assert rows[2]["mean_age"] == pytest.approx(1.0)
    with ScorerApi(scorer.base_url) as api:
        losses = api.all_losses(run_id, step=6)
        # the run's name and tags, as its YAML gave them, found by a search
        found = list(api.all_runs(tags={"budget": "quarter"}, name="QUARTER"))
    assert sum(v is not None for v in losses) == 16
    assert [(r.run_id, r.run_name, r.tags) for r in found] == [(run_id, "a quarter", tags)]


def test_async_run_uses_older_weights_and_records_them(tiny_model, scorer, tmp_path):
    out, run_id = run_trainer(tiny_model, scorer, tmp_path, "async")
    rows = check_run(tiny_model, scorer, out, run_id, mode="async")
    scored = {c["step"] for c in checkpoints(scorer, run_id) if c["status"] == "scored"}
    for row in rows:
        assert row["weights_step"] is None or row["weights_step"] < row["global_step"]
        assert row["weights_step"] is None or row["weights_step"] in scored


def test_a_second_run_under_a_finished_runs_id_is_refused(tiny_model, scorer, tmp_path):
    first, run_id = run_trainer(tiny_model, scorer, tmp_path / "first", "sync", run_id="shared")
    assert run_id == "shared" and (first / "selections.jsonl").is_file()
    data = tmp_path / "first" / "data.json"
    config = write_config(
        tmp_path / "second.yaml", tiny_model, data, tmp_path / "second", run_id="shared", seed=43
    )
    trainer = TrainerProcess(config, *scorer_keys(scorer), log=tmp_path / "second.log")
    assert trainer.wait() == 1
    assert "run shared is already registered by another training run" in trainer.log()
    assert not (tmp_path / "second" / "selections.jsonl").exists()  # nothing trained
    assert [c["step"] for c in checkpoints(scorer, "shared")] == [2, 4, 6]  # the first's only
