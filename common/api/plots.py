"""Pictures of the selection, drawn headless with matplotlib: PNG bytes for the scorer's plot
endpoints and for reports. Each function builds a Figure from plain arrays (pure, testable);
`png` renders one."""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

WINDOW_COLOUR = "tab:orange"
RANK_LABEL = "rank (largest loss reduction first)"
# Colours of groups of samples: none is the window's orange, the red of the line where
# reductions turn negative, or the grey of the groups left out of the legend.
GROUP_COLOURS = (
    *("tab:blue", "tab:green", "black", "tab:purple", "tab:cyan"),
    *("tab:brown", "tab:pink", "tab:olive", "navy", "gold"),
)
MAX_GROUPS = len(GROUP_COLOURS)  # legend entries for groups, OTHER included
OTHER = "other"
OTHER_COLOUR = "tab:gray"


def deltas_by_rank(
    deltas: np.ndarray,
    *,
    window: tuple[int, int] | None,
    truncated_at: int | None,
    title: str,
    groups: Sequence[str] | None = None,
    max_groups: int = MAX_GROUPS,
) -> Figure:
    """Loss reduction (initial − current) by rank, largest first, with the window's ranks
    shaded and the rank where reductions turn negative marked. deltas: sorted descending (one
    per ranked sample); groups: a label per ranked sample, to colour them by (at most
    max_groups in the legend, the rarest beyond them drawn grey as OTHER), with a strip below
    that shows where each group's samples sit in the ranking (figure.axes[1])."""
    ranks = np.arange(deltas.size)
    if groups is None:
        figure = Figure(figsize=(7, 4))
        ax = figure.subplots()
        ax.plot(ranks, deltas, ".", markersize=3, color="tab:blue", label="samples")
    else:
        figure = Figure(figsize=(7, 5.5))
        ax, strip = figure.subplots(2, 1, sharex=True, height_ratios=[3, 1.2])
        _by_group(ax, strip, ranks, deltas, fewer_groups(groups, max_groups))
    if window is not None and window[1] > window[0]:
        ax.axvspan(window[0], window[1], color=WINDOW_COLOUR, alpha=0.25, label="window")
        if groups is not None:
            strip.axvspan(window[0], window[1], color=WINDOW_COLOUR, alpha=0.25)
    if truncated_at is not None:
        ax.axvline(truncated_at, color="tab:red", linestyle="--", label="δ turns negative")
        if groups is not None:
            strip.axvline(truncated_at, color="tab:red", linestyle="--")
    ax.axhline(0.0, color="grey", linewidth=0.8)
    return _labelled(
        figure,
        ax,
        RANK_LABEL if groups is None else "",
        "δ = initial loss − current loss",
        title,
        legend="upper right",
        legend_size="small" if groups is None else "x-small",
        ncol=1 if groups is None else 2,
    )


def _by_group(
    ax: Any, strip: Any, ranks: np.ndarray, deltas: np.ndarray, groups: list[str]
) -> None:
    """Each group's points in its colour on ax, and a row of its ranks on strip."""
    labels = np.asarray(groups, dtype=object)
    names = group_order(groups)
    for k, name in enumerate(names):
        chosen = labels == name
        colour = OTHER_COLOUR if name == OTHER else GROUP_COLOURS[k % len(GROUP_COLOURS)]
        ax.plot(ranks[chosen], deltas[chosen], ".", markersize=4, color=colour, label=name)
        strip.plot(ranks[chosen], np.full(int(chosen.sum()), k), "|", markersize=5, color=colour)
    strip.set_yticks(range(len(names)), names, fontsize="x-small")
    strip.set_ylim(len(names) - 0.5, -0.5)  # the legend's order, top to bottom
    strip.set_xlabel(RANK_LABEL)


def fewer_groups(groups: Sequence[str], max_groups: int = MAX_GROUPS) -> list[str]:
    """The labels as given when there are at most max_groups kinds; else the max_groups - 1
    most frequent kept (ties: the first in group_order) and every other one OTHER."""
    counts = Counter(groups)
    if len(counts) <= max_groups:
        return list(groups)
    order = {name: k for k, name in enumerate(group_order(counts))}
    kept = set(sorted(counts, key=lambda name: (-counts[name], order[name]))[: max_groups - 1])
    return [name if name in kept else OTHER for name in groups]


def group_order(labels: Iterable[str]) -> list[str]:
    """The distinct labels in legend order: by value when all are numbers, else by name;
    OTHER last."""
    names = set(labels)
    found = sorted(names - {OTHER}, key=_number_or_name)
    return [*found, OTHER] if OTHER in names else found


def _number_or_name(label: str) -> tuple[int, float, str]:
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)


def _labelled(
    figure: Figure,
    ax: Any,
    xlabel: str,
    ylabel: str,
    title: str,
    *,
    legend: str | None = None,
    legend_size: str = "small",
    ncol: int = 1,
) -> Figure:
    """Axis labels, title and (where given) the legend's corner; laid out."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if legend is not None:
        ax.legend(loc=legend, fontsize=legend_size, ncol=ncol)
    figure.tight_layout()
    return figure


def png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def training_loss(
    steps: Sequence[int],
    losses: Sequence[float],
    *,
    update_steps: Sequence[int] = (),
    eval_points: Sequence[tuple[int, float]] = (),
    smoothing: float = 0.9,
) -> Figure:
    """The training loss by step, raw and smoothed (an exponential moving average with
    `smoothing`, debiased at the start), the update steps marked, the eval loss when given."""
    figure = Figure(figsize=(7, 4))
    ax = figure.subplots()
    ax.plot(steps, losses, color="tab:blue", alpha=0.35, label="training loss")
    ax.plot(steps, smoothed(losses, smoothing), color="tab:blue", label="smoothed")
    if eval_points:
        eval_steps, eval_losses = zip(*eval_points, strict=True)
        ax.plot(eval_steps, eval_losses, "o-", color="tab:green", label="eval loss")
    for i, step in enumerate(update_steps):
        ax.axvline(
            step, color="grey", linestyle=":", linewidth=0.8, label="update" if i == 0 else None
        )
    return _labelled(figure, ax, "step", "loss", "training loss", legend="upper right")


def smoothed(values: Sequence[float], smoothing: float) -> list[float]:
    """The exponential moving average TensorBoard draws, debiased at the start."""
    out, average = [], 0.0
    for i, value in enumerate(values, 1):
        average = smoothing * average + (1 - smoothing) * value
        out.append(average / (1 - smoothing**i) if smoothing < 1 else value)
    return out


def window_positions(
    steps: Sequence[int],
    starts: Sequence[float],
    ends: Sequence[float],
    truncated: Sequence[float | None],
    n_samples: int,
) -> Figure:
    """Where the window sat at each update: its ranks [start, end) as a band, the rank where
    reductions turned negative as a mark."""
    figure = Figure(figsize=(7, 4))
    ax = figure.subplots()
    ax.fill_between(steps, starts, ends, step=None, color=WINDOW_COLOUR, alpha=0.35, label="window")
    ax.plot(steps, starts, "o-", color=WINDOW_COLOUR, markersize=3)
    cut = [(s, t) for s, t in zip(steps, truncated, strict=True) if t is not None]
    if cut:
        ax.plot(*zip(*cut, strict=True), "x", color="tab:red", label="δ turns negative")
    ax.set_ylim(0, n_samples)
    return _labelled(
        figure,
        ax,
        "update step",
        RANK_LABEL,
        "window position over updates",
        legend="upper left",
    )


def draw_counts(counts: np.ndarray) -> Figure:
    """How often each sample was trained: a histogram over samples of their counts."""
    figure = Figure(figsize=(7, 4))
    ax = figure.subplots()
    top = int(counts.max()) if counts.size else 0
    ax.hist(counts, bins=[b - 0.5 for b in range(top + 2)], color="tab:blue")
    return _labelled(
        figure,
        ax,
        "times trained",
        "samples",
        f"how often each of {counts.size} samples was trained",
    )


def trajectories(histories: dict[str, list[tuple[int, float]]], title: str) -> Figure:
    """Loss by checkpoint step, one line per labelled sample (a note when none has a loss)."""
    figure = Figure(figsize=(7, 4))
    ax = figure.subplots()
    drawn = 0
    for label, points in histories.items():
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, "o-", markersize=3, label=label)
            drawn += 1
    if not drawn:
        ax.text(0.5, 0.5, "no scored loss yet", ha="center", va="center", transform=ax.transAxes)
    return _labelled(
        figure,
        ax,
        "checkpoint step",
        "loss",
        title,
        legend="upper right" if drawn else None,
        legend_size="x-small",
        ncol=2,
    )


def eval_loss(
    steps: Sequence[int], losses: Sequence[float], *, update_steps: Sequence[int] = ()
) -> Figure:
    """The evaluation loss by step (what LLaMA-Factory draws as training_eval_loss.png), the
    update steps marked."""
    figure = Figure(figsize=(7, 4))
    ax = figure.subplots()
    ax.plot(steps, losses, "o-", color="tab:green", label="eval loss")
    for i, step in enumerate(update_steps):
        ax.axvline(
            step, color="grey", linestyle=":", linewidth=0.8, label="update" if i == 0 else None
        )
    return _labelled(figure, ax, "step", "eval loss", "evaluation loss", legend="upper right")


def eval_curves(curves: dict[str, list[list[tuple[int, float]]]]) -> Figure:
    """Eval loss by step for each strategy on the same axes: one thin line per seed, and the
    mean over seeds, thick, where the seeds evaluated at the same steps."""
    figure = Figure(figsize=(7, 4))
    ax = figure.subplots()
    for n, (strategy, runs) in enumerate(curves.items()):
        color = f"C{n % 10}"
        for run in runs:
            if run:
                steps, losses = zip(*run, strict=True)
                ax.plot(steps, losses, color=color, alpha=0.35, linewidth=0.8)
        steps_of = {tuple(step for step, _ in run) for run in runs if run}
        if len(steps_of) == 1:
            steps = next(iter(steps_of))
            mean = np.mean([[loss for _, loss in run] for run in runs], axis=0)
            ax.plot(steps, mean, "o-", color=color, linewidth=2, markersize=3, label=strategy)
        else:
            ax.plot([], [], color=color, label=strategy)
    return _labelled(figure, ax, "step", "eval loss", "eval loss by strategy", legend="upper right")
