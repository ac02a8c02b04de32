"""Does Delta Loss help on this data? The same config trained once per strategy and seed, with
the same optimizer steps, data, model and eval set, and the eval loss compared.

Strategies:
- `delta_sync`: Delta Loss, each update waiting for its own checkpoint's weights (the scorer
  named by the config);
- `delta_async`: Delta Loss from the newest weights already scored (staleness recorded);
- `uniform`: the same draws over equal weights (trainer_svc.scorer.uniform), no scorer.

Seeds change the config's `seed`: the order within each segment, a val_size split, LoRA's
initialisation and dropout. The draws themselves follow the published method's seeds (42, and
42 + the update's step), the same for every seed.

Runs go to OUTPUT_DIR/compare/runs/STRATEGY-seedS (OUTPUT_DIR: the config's output_dir);
OUTPUT_DIR/compare/summary.json, summary.md and eval_loss.png hold the comparison.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.data.datasets import training_fields
from trainer_svc.config.train_config import ConfigError, LoadedConfig, load_config
from trainer_svc.training.records import SELECTIONS, TRAINED, eval_history, read_jsonl

logger = logging.getLogger(__name__)

STRATEGIES: dict[str, str | None] = {  # strategy -> selection_mode (None: no scorer)
    "delta_sync": "sync",
    "delta_async": "async",
    "uniform": None,
}
DEFAULT_STRATEGIES = ("delta_sync", "delta_async", "uniform")
COMPARE_DIR = "compare"


@dataclass(frozen=True)
class Trial:
    """One run of the comparison, as its records tell it."""

    strategy: str
    seed: int
    output_dir: str
    wall_seconds: float
    seconds_waited: float  # for the scorer, over all updates
    eval_curve: list[tuple[int, float]]  # (step, eval loss)
    staleness: list[int | None]  # per update: how many updates old its weights were
    trained: list[int]  # every sample index trained, in order
    sources: dict[str, int]  # updates by where their weights came from (scorer, uniform...)
    group_shares: dict[str, float] | None = None  # the share of the samples trained per group

    @property
    def final_eval_loss(self) -> float | None:
        return self.eval_curve[-1][1] if self.eval_curve else None

    @property
    def best(self) -> tuple[int, float] | None:
        """The lowest eval loss once training began (the evaluation at step 0 is the
        untrained model's, the same for every strategy)."""
        trained = [point for point in self.eval_curve if point[0] > 0]
        return min(trained, key=lambda point: point[1]) if trained else None


def mode_of(strategy: str) -> str | None:
    """The selection_mode of a strategy (None: uniform, no scorer)."""
    return STRATEGIES[strategy.partition("@")[0]]


def budget_of(strategy: str) -> float | None:
    """A Delta Loss strategy's scoring budget, written after @ (delta_async@0.1: a tenth of
    the samples per checkpoint; delta_sync@500: 500 samples); None: the config's own."""
    name, at, text = strategy.partition("@")
    if not at:
        return None
    try:
        budget = float(text)
    except ValueError:
        budget = float("nan")
    if not (budget > 0 and (budget <= 1 or budget == int(budget))):
        raise ValueError(
            f"{strategy!r}: the budget after @ is a fraction in (0, 1] or a whole number of "
            "samples, as delta_async@0.1 or delta_sync@500"
        )
    return budget


def parse_strategies(text: str) -> list[str]:
    chosen = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [s for s in chosen if s.partition("@")[0] not in STRATEGIES]
    if unknown or not chosen:
        raise ValueError(
            f"unknown strategy {unknown[0] if unknown else text!r}: choose among "
            f"{', '.join(STRATEGIES)}, comma-separated; a Delta Loss one may take a scoring "
            "budget after @ (delta_async@0.1)"
        )
    for strategy in chosen:
        if budget_of(strategy) is not None and mode_of(strategy) is None:
            raise ValueError(f"{strategy!r}: uniform sampling scores nothing, so takes no budget")
    return list(dict.fromkeys(chosen))


def parse_seeds(text: str) -> list[int]:
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts or not all(p.isascii() and p.isdigit() for p in parts):
        raise ValueError(f"{text!r} is not a list of seeds; give whole numbers, as 42,43,44")
    return list(dict.fromkeys(int(p) for p in parts))


def trial_overrides(loaded: LoadedConfig, strategy: str, seed: int, folder: Path) -> list[str]:
    """The keys one trial changes: its seed, its folder, its mode, its run id, and evaluation
    every update_step steps when the config sets no eval_steps. A Delta Loss trial fails
    rather than draw uniformly when the scorer fails: it would not be Delta Loss."""
    cfg = loaded.config
    mode = mode_of(strategy)
    keys = [f"seed={seed}", f"output_dir={folder}", "resume_from_checkpoint=null"]
    if mode is not None:
        keys += [f"selection_mode={mode}", "on_scorer_failure=fail"]
    budget = budget_of(strategy)
    if budget is not None:
        keys.append(f"score_budget={budget:g}")
    if cfg.run_id:
        keys.append(f"run_id={cfg.run_id[:100]}-{strategy.replace('@', '-at-')}-seed{seed}")
    if cfg.eval_steps is None:
        keys.append(f"eval_steps={cfg.update_step}")
    return keys


def check_comparable(loaded: LoadedConfig) -> None:
    """A comparison needs an eval set to compare on."""
    cfg = loaded.config
    if loaded.eval_samples is None or cfg.eval_strategy == "no":
        raise ConfigError(
            {
                "eval_dataset": "a comparison compares eval losses: set eval_dataset (or "
                "val_size), and leave eval_strategy at steps"
            }
        )


Runner = Callable[[LoadedConfig, str], None]


def run_trial(loaded: LoadedConfig, strategy: str) -> None:
    """Train one trial in this process: the scorer of the config, or uniform weights."""
    from trainer_svc.scorer.uniform import UniformSelection
    from trainer_svc.training.recipe import run

    scorer = UniformSelection() if mode_of(strategy) is None else None
    run(loaded, scorer=scorer)


def compare(
    config: str | Path,
    overrides: Sequence[str] = (),
    *,
    strategies: Sequence[str] = DEFAULT_STRATEGIES,
    seeds: Sequence[int] = (42,),
    group_by: str | None = None,
    runner: Runner = run_trial,
) -> Path:
    """Train every strategy with every seed; write the summary and its picture, and return
    summary.json's path. group_by: a column of the dataset's rows (a group, a source): the
    share of each of its values among the samples each strategy trained is reported."""
    base = load_config(config, list(overrides))
    check_comparable(base)
    if group_by is not None:
        groups(base, group_by)  # a column no row has is refused before anything trains
    folder = Path(base.config.output_dir) / COMPARE_DIR
    planned = []  # every trial's config read (and refused) before anything trains
    for seed in seeds:
        for strategy in strategies:
            out = folder / "runs" / f"{strategy}-seed{seed}"
            if (out / "run.json").exists():
                raise ConfigError(
                    {"output_dir": f"{out} holds a run of an earlier comparison: remove "
                     f"{folder}, or give another output_dir"}
                )  # fmt: skip
            keys = [*overrides, *trial_overrides(base, strategy, seed, out)]
            planned.append((strategy, seed, out, load_config(config, keys)))
    trials: list[Trial] = []
    max_steps = base.schedule().max_steps
    try:
        for strategy, seed, out, loaded in planned:
            logger.info("comparison: %s, seed %d, in %s", strategy, seed, out)
            started = time.monotonic()
            runner(loaded, strategy)
            grouped = None if group_by is None else groups(loaded, group_by)
            trials.append(read_trial(strategy, seed, out, time.monotonic() - started, grouped))
    except BaseException:
        if trials:  # what finished is not lost
            compare_trials(folder, trials, max_steps=max_steps)
            logger.error("comparison stopped; the %d runs finished are in %s", len(trials), folder)
        raise
    return compare_trials(folder, trials, max_steps=max_steps)


def compare_trials(folder: Path, trials: Sequence[Trial], *, max_steps: int) -> Path:
    """Summarize trials already run into folder; summary.json's path."""
    return write_summary(folder, summarize(trials, max_steps=max_steps), trials)


def read_trial(
    strategy: str,
    seed: int,
    out: Path,
    wall_seconds: float,
    groups: Sequence[str] | None = None,
) -> Trial:
    """The trial as its records in `out` tell it; groups: each training sample's group, for
    the share of each among the samples trained."""
    rows = read_jsonl(out / SELECTIONS)
    state = json.loads((out / "trainer_state.json").read_text())
    curve = [(int(r["step"]), float(r["eval_loss"])) for r in eval_history(state["log_history"])]
    trained = [i for row in read_jsonl(out / TRAINED) for i in row["indices"]]
    return Trial(
        strategy=strategy,
        seed=seed,
        output_dir=str(out),
        wall_seconds=round(wall_seconds, 3),
        seconds_waited=round(sum(r["seconds_waited"] for r in rows), 3),
        eval_curve=curve,
        # uniform weights have no age: they come from no checkpoint
        staleness=[r.get("staleness") if mode_of(strategy) else None for r in rows],
        trained=trained,
        sources=dict(Counter(str(r.get("source")) for r in rows)),
        group_shares=None if groups is None else group_shares(trained, groups),
    )


def groups(loaded: LoadedConfig, field: str) -> list[str]:
    """Each training sample's value of the column `field` (its rows as the run reads them,
    its validation split left out); ConfigError when no row has the column."""
    cfg = loaded.config
    val_size = cfg.val_size if loaded.eval_dataset is None and cfg.val_size else None
    fields = training_fields(loaded.dataset, val_size, cfg.seed)
    if not any(field in row for row in fields):
        there = sorted({name for row in fields for name in row}) or ["none"]
        raise ConfigError(
            {"group_by": f"no row of the dataset has a column '{field}'; its columns besides "
             f"the text: {', '.join(there)}"}
        )  # fmt: skip
    return [str(row.get(field)) for row in fields]


def spread(values: Sequence[float]) -> dict[str, float | int | None]:
    """Mean, sample standard deviation (None for one value), min and max."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return {"n": 0, "mean": None, "std": None, "min": None, "max": None}
    return {
        "n": len(finite),
        "mean": statistics.fmean(finite),
        "std": statistics.stdev(finite) if len(finite) > 1 else None,
        "min": min(finite),
        "max": max(finite),
    }


def summarize(trials: Sequence[Trial], *, max_steps: int) -> dict[str, Any]:
    strategies = list(dict.fromkeys(t.strategy for t in trials))
    runs = []
    for t in trials:
        best = t.best
        known = [s for s in t.staleness if s is not None]
        run: dict[str, Any] = {
            "strategy": t.strategy,
            "seed": t.seed,
            "output_dir": t.output_dir,
            "final_eval_loss": t.final_eval_loss,
            "best_eval_loss": best[1] if best else None,
            "best_step": best[0] if best else None,
            "wall_seconds": t.wall_seconds,
            "seconds_waited": t.seconds_waited,
            "mean_staleness": statistics.fmean(known) if known else None,
            "samples_trained": len(t.trained),
            "distinct_samples_trained": len(set(t.trained)),
            # where each update's weights came from: an async run's first updates, before
            # any checkpoint is scored, draw uniformly
            "updates_by_source": t.sources,
            "eval_curve": t.eval_curve,
        }
        if t.group_shares is not None:
            run["group_shares"] = t.group_shares
        runs.append(run)
    by_strategy: dict[str, dict[str, Any]] = {
        s: {
            key: spread([r[key] for r in runs if r["strategy"] == s])
            for key in ("final_eval_loss", "best_eval_loss", "wall_seconds", "seconds_waited")
        }
        for s in strategies
    }
    for s in strategies:
        staleness = [r["mean_staleness"] for r in runs if r["strategy"] == s]
        by_strategy[s]["mean_staleness"] = spread([v for v in staleness if v is not None])
        shares = [r["group_shares"] for r in runs if r["strategy"] == s and "group_shares" in r]
        if shares:
            by_strategy[s]["group_shares"] = _mean_shares(shares)
    return {
        "max_steps": max_steps,
        "strategies": strategies,
        "seeds": list(dict.fromkeys(t.seed for t in trials)),
        "by_strategy": by_strategy,
        "against_uniform": _gaps(runs, "uniform", strategies),
        "async_against_sync": _async_gap(runs),
        "trained_overlap": _overlaps(trials),
        "runs": runs,
    }


def group_shares(trained: Sequence[int], groups: Sequence[str]) -> dict[str, float]:
    """The share of the samples trained that belong to each group."""
    counts = Counter(groups[i] for i in trained)
    total = sum(counts.values()) or 1
    return {g: counts.get(g, 0) / total for g in sorted(set(groups))}


def _mean_shares(shares: Sequence[Mapping[str, float]]) -> dict[str, float]:
    keys = sorted({k for s in shares for k in s})
    return {k: statistics.fmean([s.get(k, 0.0) for s in shares]) for k in keys}


def _paired(runs: Sequence[dict[str, Any]], a: str, b: str) -> dict[int, float]:
    """final eval loss of a minus that of b, per seed both ran."""
    final = {(r["strategy"], r["seed"]): r["final_eval_loss"] for r in runs}
    return {
        seed: final[(a, seed)] - final[(b, seed)]
        for (strategy, seed) in final
        if strategy == a
        and (b, seed) in final
        and final[(a, seed)] is not None
        and final[(b, seed)] is not None
    }


def _gaps(runs: Sequence[dict[str, Any]], base: str, strategies: Sequence[str]) -> dict:
    """Each strategy's final eval loss minus the baseline's, per seed (negative: better)."""
    if base not in strategies:
        return {}
    out = {}
    for s in strategies:
        if s == base:
            continue
        gaps = _paired(runs, s, base)
        out[s] = {"per_seed": gaps, **spread(list(gaps.values()))}
    return out


def _async_gap(runs: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """How stale the async weights were, and what it cost against sync, per seed."""
    gaps = _paired(runs, "delta_async", "delta_sync")
    if not gaps:
        return None
    staleness = {r["seed"]: r["mean_staleness"] for r in runs if r["strategy"] == "delta_async"}
    return {
        "per_seed": {
            seed: {"eval_loss_gap": gap, "mean_staleness": staleness.get(seed)}
            for seed, gap in gaps.items()
        },
        "eval_loss_gap": spread(list(gaps.values())),
        "mean_staleness": spread([v for v in staleness.values() if v is not None]),
    }


def _overlaps(trials: Sequence[Trial]) -> dict[str, float]:
    """For each pair of strategies (per seed, averaged): the share of trained draws the two
    have in common, counting repeats (1: the same samples as often)."""
    by = {(t.strategy, t.seed): Counter(t.trained) for t in trials}
    strategies = list(dict.fromkeys(t.strategy for t in trials))
    out = {}
    for i, a in enumerate(strategies):
        for b in strategies[i + 1 :]:
            shares = [
                sum((by[(a, seed)] & by[(b, seed)]).values()) / max(1, sum(by[(a, seed)].values()))
                for (s, seed) in by
                if s == a and (b, seed) in by
            ]
            if shares:
                out[f"{a} / {b}"] = statistics.fmean(shares)
    return out


def write_summary(folder: Path, summary: dict[str, Any], trials: Sequence[Trial]) -> Path:
    from common.api import plots  # matplotlib: only once there is something to draw

    folder.mkdir(parents=True, exist_ok=True)
    curves: dict[str, list[list[tuple[int, float]]]] = {}
    for t in trials:
        curves.setdefault(t.strategy, []).append(t.eval_curve)
    picture = folder / "eval_loss.png"
    picture.write_bytes(plots.png(plots.eval_curves(curves)))
    path = folder / "summary.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    (folder / "summary.md").write_text(summary_markdown(summary))
    return path


def _number(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _mean_spread(stats: Mapping[str, Any], digits: int = 4) -> str:
    if not stats.get("n"):
        return "–"
    text = _number(stats["mean"], digits)
    if stats.get("std") is not None:
        text += f" ± {_number(stats['std'], digits)}"
    return text


def summary_markdown(summary: dict[str, Any]) -> str:
    seeds = ", ".join(map(str, summary["seeds"]))
    lines = [
        f"# Comparison: {', '.join(summary['strategies'])}",
        "",
        f"{summary['max_steps']} optimizer steps per run, seeds {seeds}; mean ± standard "
        "deviation over seeds. Lower eval loss is better.",
        "",
        *summary_tables(summary),
    ]
    return "\n".join(lines) + "\n"


def summary_tables(summary: dict[str, Any]) -> list[str]:
    """The summary's tables and figures as markdown lines (its heading left to the caller)."""
    lines = [
        "| strategy | final eval loss | best eval loss | wall s | s waited for the scorer "
        "| staleness (updates) |",
        "|---|---|---|---|---|---|",
    ]
    for s in summary["strategies"]:
        row = summary["by_strategy"][s]
        lines.append(
            f"| {s} | {_mean_spread(row['final_eval_loss'])} "
            f"| {_mean_spread(row['best_eval_loss'])} | {_mean_spread(row['wall_seconds'], 1)} "
            f"| {_mean_spread(row['seconds_waited'], 1)} "
            f"| {_mean_spread(row['mean_staleness'], 2)} |"
        )
    sources = []
    for s in summary["strategies"]:
        counts: Counter[str] = Counter()
        for run in summary["runs"]:
            if run["strategy"] == s:
                counts.update(run["updates_by_source"])
        if STRATEGIES.get(s) is not None:
            sources.append(f"{s} {counts.get('scorer', 0)} of {sum(counts.values())}")
    if sources:
        lines += ["", "Updates drawn over the scorer's weights: " + ", ".join(sources) + "."]
    against = summary["against_uniform"]
    if against:
        lines += ["", "Final eval loss minus uniform's, per seed (negative: better than uniform):"]
        for s, gap in against.items():
            per_seed = ", ".join(f"{seed}: {v:+.4f}" for seed, v in gap["per_seed"].items())
            lines.append(f"- {s}: {_mean_spread(gap, 4)} ({per_seed})")
    sync = summary["async_against_sync"]
    if sync:
        lines += [
            "",
            f"Async against sync: weights {_mean_spread(sync['mean_staleness'], 2)} updates old "
            f"on average; final eval loss {_mean_spread(sync['eval_loss_gap'])} higher than "
            "sync's (negative: lower).",
        ]
    if summary["trained_overlap"]:
        lines += ["", "Trained draws in common (1: the same samples as often):"]
        lines += [f"- {pair}: {share:.2f}" for pair, share in summary["trained_overlap"].items()]
    shares = {
        s: summary["by_strategy"][s]["group_shares"]
        for s in summary["strategies"]
        if "group_shares" in summary["by_strategy"][s]
    }
    if shares:
        groups = sorted({g for share in shares.values() for g in share})
        lines += ["", "Share of the samples trained, by group:", ""]
        lines.append("| strategy | " + " | ".join(groups) + " |")
        lines.append("|---|" + "---|" * len(groups))
        for s, share in shares.items():
            lines.append(f"| {s} | " + " | ".join(f"{share.get(g, 0):.3f}" for g in groups) + " |")
    return lines
