"""The published cadence in miniature: every sample scored per update, a few trained.

999 samples (alpaca_en_demo), LoRA r 8 on the tiny model, batch 4, an update every 2 steps
(8 samples trained per update, about 125 scored per sample trained), 40 updates. The trainer
runs in this process on core 0, one scorer process on core 1. Per strategy: uniform sampling;
async with newest-first scoring at budgets 1, 0.25, 0.1 and 0.05; sync at budgets 1 and 0.05.

From the trainer's records (selections.jsonl): the share of updates after the first two that
drew from a window, and the weights' staleness. From the scorer's checkpoint rows (received,
started and finished times): the most checkpoints of the run waiting at once and the bytes
they held on disk. Wall time is the trainer's train_runtime, against uniform's.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from datetime import datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")

import httpx  # noqa: E402
import torch  # noqa: E402

from bench.util import ALPACA, LORA_RUN, TRAINER_CORE, Scorer, pin_self  # noqa: E402
from delta_loss_devtools.waiting import wait_until  # noqa: E402

SECTION = "## 14. The published cadence: keeping up"
# (strategy, selection_mode, score_budget, updates as a multiple of the size's); mode None:
# uniform sampling, no scorer. The long async runs show what the first 40 updates cannot:
# the steady state once the two full passes are behind.
RUNS: tuple[tuple[str, str | None, float, int], ...] = (
    ("uniform", None, 1.0, 1),
    ("async", "async", 1.0, 1),
    ("async@0.25", "async", 0.25, 1),
    ("async@0.1", "async", 0.1, 1),
    ("async@0.05", "async", 0.05, 1),
    ("sync", "sync", 1.0, 1),
    ("sync@0.05", "sync", 0.05, 1),
    ("async@0.1, 10x longer", "async", 0.1, 10),
    ("async@0.02, 10x longer", "async", 0.02, 10),
)
FULL = dict(updates=40, every=2, batch=4, cutoff=256)
TOY = dict(updates=5, every=2, batch=2, cutoff=64)


def measure(work: Path, model_dir: Path, *, toy: bool = False) -> dict[str, Any]:
    from trainer_svc.config.train_config import load_config
    from trainer_svc.scorer.uniform import UniformSelection
    from trainer_svc.training.recipe import run

    pin_self(TRAINER_CORE)
    torch.set_num_threads(1)
    size = TOY if toy else FULL
    out: dict[str, Any] = {**size, "samples": len(json.loads(ALPACA.read_text())), "runs": {}}
    with Scorer(work / "cadence-scorer") as scorer, scorer.http() as client:
        for name, mode, budget, longer in RUNS:
            slug = "".join(c if c.isalnum() else "-" for c in name)
            folder, run_id = work / f"cadence-{slug}", f"cadence-{slug}"
            updates = size["updates"] * longer
            config = work / f"{folder.name}.yaml"
            config.write_text(
                LORA_RUN.format(
                    model=model_dir,
                    dataset=ALPACA,
                    out=folder,
                    run_id=run_id,
                    lr=5e-4,
                    mode=mode or "sync",
                    budget=budget,
                    zmq=scorer.zmq_url,
                    http=scorer.base_url,
                    steps=size["every"] * (updates + 1),
                    **{**size, "updates": updates},
                )  # fmt: skip
            )
            run(load_config(config), scorer=UniformSelection() if mode is None else None)
            result = trainer_figures(folder)
            if mode is not None:  # the scorer's rows once it has nothing left of the run
                settled(client, run_id)
                result.update(queue_figures(checkpoints(client, run_id)))
            out["runs"][name] = result
    return out


def trainer_figures(folder: Path) -> dict[str, Any]:
    rows = [json.loads(line) for line in (folder / "selections.jsonl").read_text().splitlines()]
    state = json.loads((folder / "trainer_state.json").read_text())
    later = rows[2:]  # the initial checkpoint's update and the first with a window come first
    windowed = [r for r in later if r["window"] is not None and r["source"] == "scorer"]
    ages = [r["staleness"] for r in later if r["staleness"] is not None]
    first = next((i + 1 for i, r in enumerate(rows) if r["window"] is not None), None)
    after = rows[first:] if first is not None else []
    return {
        "updates": len(rows),
        "windowed_share": len(windowed) / len(later) if later else None,
        "first_window": first,  # the update (1-based) that first drew from a window
        # from the update after the first window on: how many drew from a window
        "windowed_share_after_first": (
            sum(r["window"] is not None for r in after) / len(after) if after else None
        ),
        "staleness": [r["staleness"] for r in rows],
        "staleness_median": statistics.median(ages) if ages else None,
        "staleness_max": max(ages) if ages else None,
        "windowed_median_staleness": (
            statistics.median(r["staleness"] for r in windowed) if windowed else None
        ),
        "windowed_max_staleness": max((r["staleness"] for r in windowed), default=None),
        "train_runtime": state["log_history"][-1]["train_runtime"],
    }


def checkpoints(client: httpx.Client, run_id: str) -> list[dict[str, Any]]:
    body = client.get(f"/v1/runs/{run_id}/checkpoints", params={"max_results": 1000}).json()
    return list(body["checkpoints"])


def settled(client: httpx.Client, run_id: str) -> None:
    """Wait until the scorer has nothing of the run left to score."""

    def idle() -> bool:
        return all(c["status"] not in ("received", "scoring") for c in checkpoints(client, run_id))

    wait_until(idle, f"{run_id} left nothing to score", timeout=3600, every=0.5)


def queue_figures(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The most checkpoints of a run waiting at once (received, not yet being scored nor
    superseded), with the bytes they held then, from the scorer's own timestamps."""
    events: list[tuple[datetime, int, int]] = []
    for row in rows:
        leaves = row["started_at"] or row["finished_at"]  # superseded: never started
        events.append((datetime.fromisoformat(row["received_at"]), 1, row["n_bytes"]))
        if leaves is not None:
            events.append((datetime.fromisoformat(leaves), -1, -row["n_bytes"]))
    waiting = held = most = most_bytes = 0
    for _, change, size in sorted(events, key=lambda e: (e[0], e[1])):
        waiting, held = waiting + change, held + size
        if waiting > most or (waiting == most and held > most_bytes):
            most, most_bytes = waiting, held
    statuses = [row["status"] for row in rows]
    return {
        "max_waiting": most,
        "max_waiting_bytes": most_bytes,
        "scored": statuses.count("scored"),
        "superseded": statuses.count("superseded"),
        "measured": [row.get("n_measured") for row in rows if row["status"] == "scored"],
        # seconds to score a checkpoint in full (the first two) and under the budget
        "full_pass_seconds": [r["score_seconds"] for r in rows if r["status"] == "scored"][:2],
        "budget_pass_seconds": statistics.median(
            [r["score_seconds"] for r in rows if r["status"] == "scored"][2:] or [math.nan]
        ),
    }


# The same uniform, async and sync runs at commit fc96368, before newest-first scoring and
# budgets (measured once; that code cannot take score_budget).
BEFORE = (
    "Before newest-first scoring (commit fc96368, the same uniform, async and sync runs): the "
    "async run's scorer kept every checkpoint and scored them oldest first, with up to 38 "
    "waiting at once (2.8 MB of LoRA tensors here; as many full checkpoints of a 7B model "
    "would hold about 0.5 TB), all 40 scored long after the run had ended; every update drew "
    "uniformly, from weights 35.5 updates old (median, 39 at most). Sync took 120 s, 37x "
    "uniform's 3 s."
)


def render(r: dict[str, Any]) -> list[str]:
    out = [SECTION, ""]
    if "error" in r:
        return out + ["Failed:", "", "```", r["error"], "```", ""]
    runs = r["runs"]
    uniform = runs["uniform"]
    per_update = uniform["train_runtime"] / uniform["updates"]
    passes = [s for run in runs.values() for s in run.get("full_pass_seconds", [])]
    full = statistics.median(passes) if passes else math.nan
    out += [
        f"{r['samples']} samples scored per update, {r['batch'] * r['every']} trained "
        f"(batch {r['batch']}, an update every {r['every']} steps), {r['updates']} updates "
        "unless said otherwise, LoRA r 8 on the tiny model, learning rate 5e-4; the trainer on "
        "one core, one scorer process on the other. *Windowed*: the share of updates after the "
        "first two that drew from a window; *first window*: the update that first did, and the "
        "share of the updates after it that did; staleness (in updates) of the windowed draws; "
        "*waiting*: the most checkpoints of the run queued at once, and the disk they held.",
        "",
        f"A full pass over the {r['samples']} samples takes {full:.2f} s (median) and an update "
        f"of uniform training {per_update * 1000:.0f} ms: one pass lasts "
        f"{full / per_update:.0f} updates, about what scoring {r['samples']} samples forward "
        f"against training {r['batch'] * r['every']} forward and backward costs on the same "
        "core. The initial checkpoint and the first with a window are scored in full under "
        "every budget, so no async run here draws from a window before about "
        f"{2 * full / per_update:.0f} updates.",
        "",
        "| strategy | windowed | first window (then windowed) | staleness median / max "
        "| waiting (disk) | scored / superseded | budgeted pass | wall time | against uniform |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, run in runs.items():
        if name == "uniform":
            cells = ["—"] * 6
        else:
            share, first = run["windowed_share"], run["first_window"]
            after = run["windowed_share_after_first"]
            budgeted = run["budget_pass_seconds"]
            cells = [
                "—" if share is None else f"{share:.0%}",
                "none" if first is None
                else f"{first} of {run['updates']}" + ("" if after is None else f" ({after:.0%})"),
                "—" if first is None
                else f"{run['windowed_median_staleness']} / {run['windowed_max_staleness']}",
                f"{run['max_waiting']} ({run['max_waiting_bytes'] / 1e6:.1f} MB)",
                f"{run['scored']} / {run['superseded']}",
                "—" if math.isnan(budgeted) else f"{budgeted:.2f} s",
            ]  # fmt: skip
        runtime = run["train_runtime"]
        ratio = runtime / uniform["train_runtime"] if run["updates"] == uniform["updates"] else None
        out.append(
            f"| {name} | "
            + " | ".join(cells)
            + f" | {runtime:.0f} s | "
            + ("—" if ratio is None else f"{ratio:.2f}x")
            + " |"
        )
    return out + ["", BEFORE, ""]
