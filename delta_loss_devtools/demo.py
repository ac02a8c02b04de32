"""The demo: a tiny model learns on the samples the scorer picks, all on this machine.

`python -m delta_loss_devtools.demo --out DIR` builds a tiny Llama, a generated dataset and a
held-out evaluation set in DIR, starts the scorer in the background on free loopback ports,
trains on the packaged demo.yaml, prints each update's window and selection, the evaluation loss
before and after training, where the REST API is, and the mean delta loss per group of samples,
then stops the scorer. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx

from delta_loss_devtools.demo_data import groups_of, write_dataset
from delta_loss_devtools.scorer_process import ScorerProcess
from delta_loss_devtools.tiny_model import build_tiny_model
from trainer_svc.config.train_config import load_config
from trainer_svc.training.records import eval_history

DEMO_YAML = Path(__file__).with_name("demo.yaml")  # shipped as package data


def print_update(groups: list[str]):
    def show(row: dict) -> None:
        window = row["window"]
        if window is None:
            where = "no window (uniform; the scorer keeps these losses as the initial ones)"
        elif window["end"] <= window["start"]:
            where = (
                f"window empty (u={window['u']:.2f}, start rank {window['start']}, deltas turn "
                f"negative at rank {window['truncated_at']}): uniform over ranked samples"
            )
        else:
            cut = window.get("truncated_at")
            where = f"window ranks [{window['start']}, {window['end']}) u={window['u']:.2f}" + (
                f", cut at rank {cut}" if cut is not None else ""
            )
        picked = Counter(groups[i] for i in row["sampled_indices"])
        mix = ", ".join(f"{g} {picked[g]}" for g in sorted(set(groups)))
        print(
            f"\n>> update {row['update_index']} at step {row['global_step']}: {where}; "
            f"{row['draw']} from weights of step {row['weights_step']} "
            f"(waited {row['seconds_waited']:.1f}s)\n   picked {len(row['sampled_indices'])}: "
            f"{mix}\n   indices: {row['sampled_indices'][:24]}"
            + (" ..." if len(row["sampled_indices"]) > 24 else ""),
            flush=True,
        )

    return show


def ranked_deltas(base_url: str, run_id: str) -> tuple[int, dict[int, float]]:
    """(step, {sample: loss reduction}) at the latest scored checkpoint, every ranked sample
    (those with a loss at both ends), page by page."""
    found: dict[int, float] = {}
    params: dict[str, str | int] = {"max_results": 1000}
    while True:
        body = httpx.get(f"{base_url}/v1/runs/{run_id}/deltas", params=params).json()
        found.update((item["sample_index"], item["delta"]) for item in body["items"])
        if body["next_page_token"] is None:
            return body["step"], found
        params["page_token"] = body["next_page_token"]


def print_deltas(base_url: str, run_id: str, groups: list[str]) -> None:
    run = httpx.get(f"{base_url}/v1/runs/{run_id}").json()
    last, deltas_by_sample = ranked_deltas(base_url, run_id)
    per_group: dict[str, list[float]] = defaultdict(list)
    for index, delta in deltas_by_sample.items():
        per_group[groups[index]].append(delta)
    print(f"\nmean delta loss per group (initial step {run['initial_step']} minus step {last}):")
    for group, deltas in sorted(per_group.items(), key=lambda kv: -sum(kv[1]) / len(kv[1])):
        print(f"   {group:8s} {sum(deltas) / len(deltas):+.4f}  ({len(deltas)} samples)")


def print_eval(log_history: list[dict]) -> None:
    evals = eval_history(log_history)
    if evals:
        first, last = evals[0], evals[-1]
        print(
            f"\neval loss (held-out set): {first['eval_loss']:.4f} at step {first['step']} "
            f"-> {last['eval_loss']:.4f} at step {last['step']}"
        )


def compare_with_uniform(
    config: Path, overrides: list[str], out: Path, delta_seconds: float
) -> None:
    """Train the same config with uniform sampling (same steps, seed and eval set), and
    compare it with the Delta Loss run just made: eval loss, and the groups each trained."""
    from trainer_svc.tools.compare import (
        compare_trials,
        groups,
        read_trial,
        run_trial,
        trial_overrides,
    )

    base = load_config(config, overrides)
    seed = base.config.seed
    uniform_dir = out / "run" / "compare" / "runs" / f"uniform-seed{seed}"
    print("\ncomparison: the same run with uniform sampling instead (the baseline)...")
    uniform = load_config(
        config, [*overrides, *trial_overrides(base, "uniform", seed, uniform_dir)]
    )
    started = time.monotonic()
    run_trial(uniform, "uniform")
    uniform_seconds = time.monotonic() - started
    trials = []
    for strategy, folder, seconds, loaded in (
        ("delta_sync", out / "run", delta_seconds, base),
        ("uniform", uniform_dir, uniform_seconds, uniform),
    ):
        trials.append(read_trial(strategy, seed, folder, seconds, groups(loaded, "group")))
    summary = compare_trials(out / "run" / "compare", trials, max_steps=base.schedule().max_steps)
    print((summary.parent / "summary.md").read_text())
    print(f"comparison: {summary.parent} (summary.json, summary.md, eval_loss.png)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", default="demo_out", help="folder for everything (default demo_out)"
    )
    parser.add_argument("--samples", type=int, default=320)
    parser.add_argument("--config", type=Path, default=DEMO_YAML, help="training YAML")
    parser.add_argument(
        "--assets-only",
        action="store_true",
        help="write the tiny model, the datasets and the training YAML (OUT/train.yaml), and "
        "stop: for a scorer and a trainer started apart (docker compose --profile cpu)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.out).resolve()
    started = time.monotonic()
    model = build_tiny_model(out / "tiny-model")
    data = write_dataset(out / "data" / "demo.json", n=args.samples)
    held_out = write_dataset(out / "data" / "eval.json", n=64, noise_share=0.0, seed=1)
    groups = groups_of(data)
    if args.assets_only:
        config = out / "train.yaml"
        config.write_text(args.config.read_text(encoding="utf-8"), encoding="utf-8")
        print(f"tiny model: {model}\ndataset: {data}\neval dataset: {held_out}\nconfig: {config}")
        return 0
    print(f"tiny model: {model}\ndataset: {data} ({len(groups)} samples: {dict(Counter(groups))})")
    print(f"eval dataset: {held_out} (64 held-out samples, no noise)")
    # The scorer reads the model and the data from the demo's folder, and nothing else.
    roots = ("--model-root", str(out), "--data-root", str(out))
    scorer = ScorerProcess(out / "scorer", *roots, log_path=out / "scorer.log")
    scorer.start()
    print(f"scorer: REST {scorer.base_url} (docs {scorer.base_url}/docs), ZeroMQ {scorer.zmq_url}")
    try:
        overrides = [
            f"model_name_or_path={model}", f"dataset={data}", f"eval_dataset={held_out}",
            f"output_dir={out / 'run'}",
            f"scorer_zmq_url={scorer.zmq_url}", f"scorer_http_url={scorer.base_url}",
        ]  # fmt: skip
        loaded = load_config(args.config, overrides)
        from trainer_svc.training.recipe import run

        trained_at = time.monotonic()
        recipe = run(loaded, on_update=print_update(groups))
        delta_seconds = time.monotonic() - trained_at
        run_id = recipe.run_id
        print_eval(recipe.trainer.state.log_history)
        print(f"\nrecords: {out / 'run'} (selections.jsonl, training_loss.png, the model)")
        print(f"dashboard: {scorer.base_url}/ui  (runs, checkpoints, loss reductions, samples)")
        print(f"REST API: {scorer.base_url}/docs  (run id {run_id}); loss history of sample 0:")
        print(f"   curl {scorer.base_url}/v1/runs/{run_id}/samples/0/losses")
        print(
            "   (the scorer stops with the demo; its history stays in "
            f"{scorer.data_dir}: serve it again with\n"
            f"    .venv/bin/scorer-svc serve --data-dir {scorer.data_dir} and use port 8000)"
        )
        print_deltas(scorer.base_url, run_id, groups)
        from trainer_svc.tools.report import write_report

        # each row carries its group as a column: the loss reductions by rank show the groups
        page = write_report(out / "run", scorer.base_url, color_by="group")
        print(f"\nreport (the pictures; docs/REPORT.md says what each shows): {page}")
        compare_with_uniform(args.config, overrides, out, delta_seconds)
    finally:
        scorer.stop()
        took = time.monotonic() - started
        print(f"\nscorer stopped (log: {scorer.log_path}); demo took {took:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
