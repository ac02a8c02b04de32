"""The comparison of strategies: its summary arithmetic on made-up trials, and a small real
comparison (Delta Loss against the scorer process, and uniform) end to end."""

import json

import matplotlib.image
import pytest

from delta_loss_devtools.demo_data import groups_of
from tests.support.trainer import scorer_keys, trainer_config, write_config
from trainer_svc.cli import main as cli_main
from trainer_svc.config.train_config import ConfigError, parse_config
from trainer_svc.tools.compare import (
    Trial,
    check_comparable,
    compare,
    group_shares,
    parse_seeds,
    parse_strategies,
    summarize,
    summary_markdown,
    trial_overrides,
)
from trainer_svc.training.records import read_jsonl


def trial(strategy, seed, final, *, staleness=(None, 0, 0), trained=(0, 1, 2, 3)):
    curve = [(0, final + 1.0), (10, final - 0.1), (20, final)]
    sources = {"scorer": 2, "uniform": 1} if strategy != "uniform" else {"uniform": 3}
    return Trial(strategy, seed, f"out/{strategy}-{seed}", 10.0, 2.0, curve, list(staleness),
                 list(trained), sources)  # fmt: skip


def test_the_summary_pairs_each_strategy_with_uniform_and_async_with_sync_seed_by_seed():
    trials = [
        trial("delta_sync", 42, 3.0, trained=(0, 0, 1, 2)),
        trial("delta_async", 42, 3.2, staleness=(None, 1, 1)),
        trial("uniform", 42, 3.5),
        trial("delta_sync", 43, 3.1),
        trial("delta_async", 43, 3.1, staleness=(None, 0, 1)),
        trial("uniform", 43, 3.3),
    ]
    summary = summarize(trials, max_steps=20)
    sync = summary["by_strategy"]["delta_sync"]["final_eval_loss"]
    assert (sync["n"], sync["mean"], sync["min"], sync["max"]) == (2, pytest.approx(3.05), 3.0, 3.1)
    assert sync["std"] == pytest.approx(0.0707, abs=1e-4)
    best = summary["by_strategy"]["uniform"]["best_eval_loss"]
    assert best["mean"] == pytest.approx(3.3)  # step 10's, 0.1 below the final
    against = summary["against_uniform"]
    assert against["delta_sync"]["per_seed"] == {42: pytest.approx(-0.5), 43: pytest.approx(-0.2)}
    assert against["delta_async"]["mean"] == pytest.approx((-0.3 - 0.2) / 2)
    async_gap = summary["async_against_sync"]
    assert async_gap["per_seed"][42] == {"eval_loss_gap": pytest.approx(0.2), "mean_staleness": 1}
    assert async_gap["per_seed"][43]["mean_staleness"] == 0.5
    # seed 42: sync trained 0, 0, 1, 2; the others 0, 1, 2, 3: three of four draws shared
    assert summary["trained_overlap"]["delta_sync / uniform"] == pytest.approx((0.75 + 1) / 2)
    text = summary_markdown(summary)
    assert "| delta_sync | 3.0500 ± 0.0707 |" in text
    assert "- delta_sync: -0.3500 ± 0.2121 (42: -0.5000, 43: -0.2000)" in text
    assert "Async against sync: weights 0.75 ± 0.35 updates old" in text
    assert "Updates drawn over the scorer's weights: delta_sync 4 of 6, delta_async 4 of 6." in text


def test_one_seed_has_no_spread_and_a_missing_baseline_no_gap():
    summary = summarize([trial("delta_sync", 42, 3.0)], max_steps=20)
    assert summary["by_strategy"]["delta_sync"]["final_eval_loss"]["std"] is None
    assert summary["against_uniform"] == {} and summary["async_against_sync"] is None
    assert "| delta_sync | 3.0000 |" in summary_markdown(summary)


def test_group_shares_count_every_draw():
    assert group_shares([0, 0, 1, 2], ["a", "b", "b"]) == {"a": 0.5, "b": 0.5}
    assert group_shares([2, 2], ["a", "b", "c"]) == {"a": 0.0, "b": 0.0, "c": 1.0}


def test_strategies_and_seeds_are_read_or_refused_clearly():
    assert parse_strategies("uniform, delta_sync,uniform") == ["uniform", "delta_sync"]
    with pytest.raises(ValueError, match="unknown strategy 'delta': choose among delta_sync"):
        parse_strategies("delta_sync,delta")
    assert parse_seeds("42,43") == [42, 43]
    with pytest.raises(ValueError, match="give whole numbers, as 42,43,44"):
        parse_seeds("42,x")
    with pytest.raises(SystemExit):
        cli_main(["compare", "c.yaml", "--strategies", "best"])


def test_a_delta_loss_strategy_may_take_a_scoring_budget(tiny_model, demo_file, tmp_path):
    assert parse_strategies("delta_async@0.1,delta_sync@500") == [
        "delta_async@0.1",
        "delta_sync@500",
    ]
    with pytest.raises(ValueError, match="takes no budget"):
        parse_strategies("uniform@0.1")
    for bad in ("delta_sync@2.5", "delta_sync@0", "delta_sync@x", "delta_sync@"):
        with pytest.raises(ValueError, match="fraction in"):
            parse_strategies(bad)
    raw = trainer_config(tiny_model, demo_file, tmp_path / "out", eval_dataset=str(demo_file),
                         run_id="mine")  # fmt: skip
    keys = trial_overrides(parse_config(raw), "delta_async@0.1", 42, tmp_path / "t")
    assert "selection_mode=async" in keys and "score_budget=0.1" in keys
    assert "run_id=mine-delta_async-at-0.1-seed42" in keys
    plain = trial_overrides(parse_config(raw), "delta_async", 42, tmp_path / "t")
    assert not any(key.startswith("score_budget") for key in plain)  # the config's own


def test_each_trial_changes_only_its_seed_folder_mode_and_run_id(tiny_model, demo_file, tmp_path):
    raw = trainer_config(tiny_model, demo_file, tmp_path / "out", eval_dataset=str(demo_file),
                         run_id="mine")  # fmt: skip
    loaded = parse_config(raw)
    keys = trial_overrides(loaded, "delta_async", 43, tmp_path / "t")
    assert keys == [
        "seed=43", f"output_dir={tmp_path / 't'}", "resume_from_checkpoint=null",
        "selection_mode=async", "on_scorer_failure=fail", "run_id=mine-delta_async-seed43",
        "eval_steps=2",
    ]  # fmt: skip
    assert "selection_mode=sync" not in trial_overrides(loaded, "uniform", 42, tmp_path)
    with pytest.raises(ConfigError, match="set eval_dataset"):
        check_comparable(parse_config(trainer_config(tiny_model, demo_file, tmp_path)))


def test_the_command_refuses_a_config_without_an_eval_set_or_the_group_column(
    tiny_model, demo_file, tmp_path, caplog
):
    config = write_config(tmp_path / "c.yaml", tiny_model, demo_file, tmp_path / "out")
    assert cli_main(["compare", str(config)]) == 2
    assert "set eval_dataset (or val_size)" in caplog.text
    keys = [f"eval_dataset={demo_file}"]
    assert cli_main(["compare", str(config), *keys, "--group-by", "colour"]) == 2
    assert "no row of the dataset has a column 'colour'; its columns besides the text: " in (
        caplog.text
    )
    assert not (tmp_path / "out" / "compare").exists()  # nothing trained


@pytest.mark.slow  # trains four small runs, two against a scorer process
def test_a_small_comparison_runs_end_to_end(tiny_model, demo_file, scorer, tmp_path):
    out = tmp_path / "out"
    config = write_config(tmp_path / "c.yaml", tiny_model, demo_file, out,
                          eval_dataset=str(demo_file), num_train_epochs=1.5)  # fmt: skip
    keys = scorer_keys(scorer)
    path = compare(config, keys, strategies=["delta_sync", "uniform"], seeds=[42],
                   group_by="group")  # fmt: skip
    assert path == out / "compare" / "summary.json"
    summary = json.loads(path.read_text())
    assert summary["strategies"] == ["delta_sync", "uniform"] and summary["seeds"] == [42]
    assert summary["max_steps"] == 12
    runs = {r["strategy"]: r for r in summary["runs"]}
    for strategy, run in runs.items():
        assert run["samples_trained"] == 12 * 4, strategy  # the same steps and batch
        assert [step for step, _ in run["eval_curve"]] == [0, 2, 4, 6, 8, 10, 12]
        assert run["final_eval_loss"] == run["eval_curve"][-1][1]
        assert set(run["group_shares"]) == set(groups_of(demo_file))
    # the same warmup (the first segment's draw), then different samples
    trained = {s: read_jsonl(out / "compare" / "runs" / f"{s}-seed42" / "trained_samples.jsonl")
               for s in runs}  # fmt: skip
    assert trained["delta_sync"][:2] == trained["uniform"][:2]
    assert trained["delta_sync"][2:] != trained["uniform"][2:]
    assert summary["trained_overlap"]["delta_sync / uniform"] < 1.0
    gap = summary["against_uniform"]["delta_sync"]["per_seed"]["42"]
    assert gap == pytest.approx(
        runs["delta_sync"]["final_eval_loss"] - runs["uniform"]["final_eval_loss"]
    )
    rows = read_jsonl(out / "compare" / "runs" / "uniform-seed42" / "selections.jsonl")
    assert [r["draw"] for r in rows] == ["randperm", "multinomial", "multinomial", "multinomial"]
    assert {r["source"] for r in rows} == {"uniform"} and runs["uniform"]["mean_staleness"] is None
    assert runs["delta_sync"]["updates_by_source"] == {"scorer": 4}
    with pytest.raises(ConfigError, match="holds a run of an earlier comparison"):
        compare(config, keys, strategies=["uniform"], seeds=[42])
    assert (
        (out / "compare" / "summary.md").read_text().startswith("# Comparison: delta_sync, uniform")
    )
    assert matplotlib.image.imread(out / "compare" / "eval_loss.png").shape[1] == 700
