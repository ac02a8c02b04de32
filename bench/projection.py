"""The published scale, projected: how long sync epochs take and how old async weights are,
with newest-first scoring and scoring budgets, on 1, 8 and 64 scorer GPUs. Arithmetic on the
published setup's sizes and an assumed GPU throughput, not a measurement; the ages come from
simulating the scorer's queue update by update."""

from __future__ import annotations

import math

# The published setup (Delta Loss on DataFlex): what a scoring pass costs there.
PAPER_SAMPLES = 100_000
PAPER_TOKENS_PER_PASS = 35e6  # about 350 tokens per sample
PAPER_UPDATES_PER_EPOCH = 30
PAPER_TRAIN_SECONDS_PER_UPDATE = 10.0  # the trainer's compute between updates, global batch 8
MODEL_PARAMS = 7e9
GPU_PEAK_FLOPS = 989e12  # H100 SXM, bf16 dense
ASSUMED_MFU = 0.5
GPUS = (1, 8, 64)
BUDGETS = (1.0, 0.1, 0.01)
FULL_PASSES = 2  # under a budget below 1, the initial checkpoint and the first with a window


def full_pass_seconds(gpus: int, efficiency: float) -> float:
    """One pass over every sample on `gpus` GPUs, each keeping `efficiency` of its speed."""
    one = PAPER_TOKENS_PER_PASS * 2 * MODEL_PARAMS / (GPU_PEAK_FLOPS * ASSUMED_MFU)
    return one / (gpus * (efficiency if gpus > 1 else 1.0))


def sync_hours(full: float, budget: float, updates: int = PAPER_UPDATES_PER_EPOCH) -> float:
    """An epoch of sync updates (the run's first): each waits for its pass; under a budget the
    first two passes are full and the others take `budget` of one."""
    full_passes = updates if budget >= 1 else min(FULL_PASSES, updates)
    scoring = full * (full_passes + budget * (updates - full_passes))
    return (scoring + updates * PAPER_TRAIN_SECONDS_PER_UPDATE) / 3600


def async_ages(
    full_updates: float, budget: float, updates: int = PAPER_UPDATES_PER_EPOCH
) -> list[int | None]:
    """The age in updates of the windowed weights each update of a run draws from (None: no
    checkpoint with a window scored yet, so uniform weights), newest first: checkpoint k
    arrives at update k (checkpoint 0 the initial one, without a window); the scorer, when
    free, takes the newest that has arrived and scores it, the first two in full_updates and
    the others in budget times that."""
    done: list[tuple[float, int]] = []  # (when scored, checkpoint)
    free, unseen = 0.0, 0  # when the scorer is free; the first checkpoint it has not taken
    while (start := max(free, unseen)) < updates:  # a new checkpoint has arrived by `start`
        checkpoint = math.floor(start)
        free = start + full_updates * (1.0 if len(done) < FULL_PASSES else budget)
        done.append((free, checkpoint))
        unseen = checkpoint + 1
    ages: list[int | None] = []
    newest, position = 0, 0  # done is in time order, its checkpoints ascending
    for k in range(updates):
        while position < len(done) and done[position][0] <= k + 1e-9:
            newest, position = done[position][1], position + 1
        ages.append(k - newest if newest > 0 else None)
    return ages


def age_summary(ages: list[int | None]) -> tuple[int, int | None, int | None]:
    """(updates without a window, median age, max age) over the updates after the first two."""
    later = ages[FULL_PASSES:]
    known = sorted(a for a in later if a is not None)
    if not known:
        return len(later), None, None
    return len(later) - len(known), known[len(known) // 2], known[-1]


def steady_oldest(full: float, budget: float) -> int:
    """The oldest windowed weights an update draws from once the full passes are behind: over
    a long run, from the first update that has windowed weights on."""
    ages = async_ages(full / PAPER_TRAIN_SECONDS_PER_UPDATE, budget, updates=20_000)
    first = next(i for i, a in enumerate(ages) if a is not None)
    settled = ages[first:][int(2 * full / PAPER_TRAIN_SECONDS_PER_UPDATE) + 1 :]
    return max(a for a in settled if a is not None)


def budget_within(ages_at_most: int, full: float) -> float:
    """The largest budget (to 1e-4) that keeps async weights within `ages_at_most` updates once
    the full passes are behind."""
    if steady_oldest(full, 1.0) <= ages_at_most:
        return 1.0
    low, high = 0.0, 1.0
    for _ in range(30):
        middle = (low + high) / 2
        low, high = (middle, high) if steady_oldest(full, middle) <= ages_at_most else (low, middle)
    return math.floor(low * 1e4) / 1e4


def fewest_gpus(ages_at_most: int, efficiency: float) -> int:
    """The fewest scorer GPUs that keep async weights within `ages_at_most` without a budget."""
    low, high = 1, 1
    while steady_oldest(full_pass_seconds(high, efficiency), 1.0) > ages_at_most:
        low, high = high, high * 2
    while low < high:
        middle = (low + high) // 2
        fits = steady_oldest(full_pass_seconds(middle, efficiency), 1.0) <= ages_at_most
        low, high = (low, middle) if fits else (middle + 1, high)
    return high


def render(efficiency: float | None) -> list[str]:
    out = ["## 9. Projection to the published scale", ""]
    if efficiency is None:
        return out + ["Not computed: section 8 did not run.", ""]
    one = full_pass_seconds(1, efficiency)
    out += [
        f"Arithmetic, not a measurement: {PAPER_SAMPLES:,} samples "
        f"({PAPER_TOKENS_PER_PASS / 1e6:.0f}M tokens) scored at each of "
        f"{PAPER_UPDATES_PER_EPOCH} updates per epoch through a 7B model (2 x 7e9 FLOP per "
        f"token) on H100-class GPUs at {ASSUMED_MFU:.0%} model-FLOP utilisation: "
        f"{one / 60:.1f} min per full pass on one GPU. Several GPUs are assumed to keep the "
        f"per-rank efficiency measured in section 8 ({efficiency:.0%}); the trainer computes "
        f"{PAPER_TRAIN_SECONDS_PER_UPDATE:.0f} s between updates. A budget b scores b of the "
        "samples at each checkpoint after the first two (scored in full). Sync waits for "
        "every pass; async never waits, and with newest-first scoring the age of its weights "
        "comes from simulating the queue over one epoch (`bench/projection.py`: checkpoint k "
        "arrives at update k, the scorer takes the newest whenever it is free). *Uniform*: "
        "updates after the first two with no windowed weights yet (the initial checkpoint's "
        "are uniform).",
        "",
        "| scorer GPUs | budget | one pass | sync: hours per epoch | async: uniform | "
        "async: age median / max (updates) |",
        "|---|---|---|---|---|---|",
    ]
    for gpus in GPUS:
        full = full_pass_seconds(gpus, efficiency)
        for b in BUDGETS:
            blind, median, oldest = age_summary(
                async_ages(full / PAPER_TRAIN_SECONDS_PER_UPDATE, b)
            )
            ages = "—" if median is None else f"{median} / {oldest}"
            out.append(
                f"| {gpus} | {b:g} | {_duration(full * b)} | {sync_hours(full, b):.2f} | "
                f"{blind} of {PAPER_UPDATES_PER_EPOCH - FULL_PASSES} | {ages} |"
            )
    within = budget_within(2, one)
    gpus = fewest_gpus(2, efficiency)
    out += [
        "",
        f"On one spare GPU, async weights stay within 2 updates of the model they select for, "
        f"once the first two full passes are behind, at a budget of **{within:g}** or less "
        f"({within * PAPER_SAMPLES:,.0f} samples per checkpoint, a pass of "
        f"{within * one:.0f} s); without a budget that takes {gpus} GPUs at this efficiency. "
        "What no budget shortens: the initial checkpoint and the first with a window are "
        f"scored in full, {2 * one / 60:.0f} min on one GPU, longer than this epoch of "
        f"{PAPER_UPDATES_PER_EPOCH * PAPER_TRAIN_SECONDS_PER_UPDATE / 60:.0f} min of training: "
        "there a one-epoch async run draws uniformly throughout, and a budget pays off from "
        "the second epoch on, or with more GPUs.",
        "",
    ]
    return out


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"
