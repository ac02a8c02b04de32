"""How close a scoring budget's windows come to full scoring of the same checkpoint.

A sync run is trained with every checkpoint scored in full (bench/loss_matrix.py). Each
policy is then replayed over its losses: at every checkpoint it sees only the losses of the
samples it chose to measure, and its window and weights are compared with those that the
full losses of the same checkpoint give. The replay takes the full run's trajectory for
every policy (a budgeted run would train on slightly other draws), so it measures the
estimate and nothing else.

Per budgeted checkpoint (every one after the first with a window):
- Jaccard index of the two windows' samples;
- total-variation distance of the two weight vectors;
- the share of draws (expected, from the weights) that land inside the full window.

Policies:
- `stale-s`: no budget, a full pass s updates old (what async gives when it keeps up);
- `naive`: round-robin, each sample ranked by its last measured loss reduction;
- `percentile`: round-robin after a first windowed pass in full, each sample ranked by its
  reduction as a percentile among the samples measured with it;
- `drift`: the shipped policy (common.budget): deadlines first, spread over the ranking, then
  the samples nearest the window's edges; estimates carried by the drift of the samples
  measured at both checkpoints;
- `drift-rr`: the same estimate with a round-robin choice by index (the choice's share);
- `drift-relaxed`: the shipped policy with deadlines twice as long, leaving part of the
  budget to the window's edges (what the refresh rule costs).

The bias of a stale loss reduction is measured too: over the samples a checkpoint did not
measure, the mean of (full reduction - estimate), for the last measured reduction as it is
(`naive`) and for the shipped policy's estimate.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.loss_matrix import run_fully_scored
from bench.util import ALPACA, ROOT
from common import budget
from common.selection import DEFAULT_WINDOW_SIZE, weights_from_window, window_over

BUDGETS = (1.0, 0.5, 0.25, 0.1, 0.05)
STALE = (1, 2, 3)


@dataclass(frozen=True)
class Fidelity:
    jaccard: float
    tv: float
    inside: float  # share of draws inside the full window


def compare(
    truth: np.ndarray, estimate: np.ndarray, update_index: int, update_times: int, ws: float
) -> Fidelity:
    """The window and weights of `estimate` (loss reductions) against those of `truth`."""
    n = truth.size
    w_true, r_true = window_over(truth, update_index, update_times, ws)
    w_est, r_est = window_over(estimate, update_index, update_times, ws)
    a = set(r_true[w_true.start : w_true.end].tolist())
    b = set(r_est[w_est.start : w_est.end].tolist())
    jaccard = len(a & b) / len(a | b) if a | b else 1.0
    p = weights_from_window(w_true, r_true, n)
    q = weights_from_window(w_est, r_est, n)
    inside = float(q[list(a)].sum()) if a else 0.0
    return Fidelity(jaccard, 0.5 * float(np.abs(p - q).sum()), inside)


# A policy replays a run: given the initial losses and the checkpoints' losses (C x N, row 0
# the initial checkpoint), it yields at each checkpoint c >= 2 the loss reductions it ranks.
Policy = Callable[[np.ndarray, np.ndarray, float, int, float], Iterator[np.ndarray]]


def stale(s: int) -> Policy:
    def replay(losses, index, _budget, _u, _ws):  # noqa: ANN001, ANN202
        for c in range(2, len(losses)):
            yield losses[0] - losses[max(1, c - s)]

    return replay


def _round_robin(n: int, k: int, turn: int) -> np.ndarray:
    """Samples turn * k, ... (turn + 1) * k - 1, modulo n."""
    start = (turn * k) % n
    return (np.arange(start, start + k) % n).astype(np.int64)


def naive(losses, index, b, _u, _ws):  # noqa: ANN001, ANN201
    """Round-robin, each sample ranked by its last measured loss reduction."""
    n = losses.shape[1]
    k = budget.samples_per_checkpoint(b, n)
    last = losses[0] - losses[1]
    for c in range(2, len(losses)):
        chosen = _round_robin(n, k, c - 2)
        last = last.copy()
        last[chosen] = (losses[0] - losses[c])[chosen]
        yield last


def percentile(losses, index, b, _u, _ws):  # noqa: ANN001, ANN201
    """Round-robin, ranked by each reduction's percentile among those measured with it."""
    n = losses.shape[1]
    k = budget.samples_per_checkpoint(b, n)

    def ranks(values: np.ndarray) -> np.ndarray:
        order = np.argsort(np.argsort(values, kind="stable"), kind="stable")
        return (order + 0.5) / values.size

    pct = ranks(losses[0] - losses[1])
    for c in range(2, len(losses)):
        chosen = _round_robin(n, k, c - 2)
        pct = pct.copy()
        pct[chosen] = ranks((losses[0] - losses[c])[chosen])
        yield pct


def drift(choice: str = "edges", period_factor: int = 1) -> Policy:
    """common.budget's estimates; choice "rr": round-robin instead of budget.choose;
    period_factor: deadlines that many times longer."""

    def replay(losses, index, b, update_times, ws):  # noqa: ANN001, ANN202
        n = losses.shape[1]
        k = budget.samples_per_checkpoint(b, n)
        state = budget.Estimates.measured_all(losses[0] - losses[1])
        for c in range(2, len(losses)):
            if choice == "rr":
                chosen = _round_robin(n, k, c - 2)
            else:
                chosen = _choose(state, k, int(index[c]), update_times, ws, period_factor)
            state, _ = budget.advance(state, chosen, losses[0] - losses[c])
            yield state.delta

    return replay


def _choose(
    state: budget.Estimates, k: int, u: int, update_times: int, ws: float, factor: int
) -> np.ndarray:
    """budget.choose, with ages counted at 1/factor when deadlines are `factor` times longer."""
    if factor == 1:
        return budget.choose(state, k, update_index=u, update_times=update_times, window_size=ws)
    # a longer deadline: the same rule on ages counted at 1/factor
    slow = budget.Estimates(state.delta, (state.age // factor).astype(np.int32))
    return budget.choose(slow, k, update_index=u, update_times=update_times, window_size=ws)


POLICIES: dict[str, Policy] = {
    "naive": naive,
    "percentile": percentile,
    "drift": drift(),
    "drift-rr": drift("rr"),
    "drift-relaxed": drift(period_factor=2),
}


def replay(
    losses: np.ndarray,
    update_index: np.ndarray,
    update_times: int,
    policy: Policy,
    b: float,
    ws: float = DEFAULT_WINDOW_SIZE,
) -> list[Fidelity]:
    """The fidelity of `policy` at budget b at each checkpoint from the second windowed on."""
    out = []
    estimates = policy(losses, update_index, b, update_times, ws)
    for c, estimate in zip(range(2, len(losses)), estimates, strict=True):
        truth = losses[0] - losses[c]
        out.append(compare(truth, estimate, int(update_index[c]), update_times, ws))
    return out


def mean(rows: list[Fidelity]) -> Fidelity:
    if not rows:
        return Fidelity(math.nan, math.nan, math.nan)
    return Fidelity(
        *(float(np.mean([getattr(r, f) for r in rows])) for f in ("jaccard", "tv", "inside"))
    )


def bias(losses: np.ndarray, update_index: np.ndarray, update_times: int, b: float) -> dict:
    """Mean (full reduction - estimate) over the samples not measured, per checkpoint
    averaged: the last measured reduction as it is, and the shipped policy's estimate."""
    n = losses.shape[1]
    k = budget.samples_per_checkpoint(b, n)
    state = budget.Estimates.measured_all(losses[0] - losses[1])
    last = state.delta.copy()
    raw, corrected = [], []
    for c in range(2, len(losses)):
        truth = losses[0] - losses[c]
        chosen = budget.choose(
            state, k, update_index=int(update_index[c]), update_times=update_times,
            window_size=DEFAULT_WINDOW_SIZE,
        )  # fmt: skip
        state, _ = budget.advance(state, chosen, truth)
        stale = state.age > 0
        raw.append(float(np.nanmean((truth - last)[stale])))
        corrected.append(float(np.nanmean((truth - state.delta)[stale])))
        last = last.copy()
        last[chosen] = truth[chosen]
    return {"stale": float(np.mean(raw)), "corrected": float(np.mean(corrected))}


# (label, data set, learning rate): the runs whose every checkpoint is scored in full
RUNS = (("alpaca_en_demo, lr 5e-4", "alpaca", 5e-4), ("alpaca_en_demo, lr 5e-3", "alpaca", 5e-3),
        ("the demo's data, lr 5e-4", "demo", 5e-4))  # fmt: skip
FULL = dict(updates=40, every=10)
TOY = dict(updates=5, every=2)
PLOT = ROOT / "docs" / "budget_fidelity.png"


def measure(work: Path, model_dir: Path, *, toy: bool = False) -> dict[str, Any]:
    from delta_loss_devtools.demo_data import write_dataset

    size = TOY if toy else FULL
    demo = write_dataset(work / "fidelity-demo.json", n=40 if toy else 320, seed=0)
    out: dict[str, Any] = {**size, "runs": {}}
    series: dict[str, list[float]] = {}
    for label, data, lr in RUNS:
        dataset = ALPACA if data == "alpaca" else demo
        m = run_fully_scored(work, model_dir, dataset, lr=lr, **size)
        tables: dict[str, dict[str, Any]] = {}
        for s in STALE:
            tables[f"stale-{s}"] = asdict(
                mean(replay(m.losses, m.update_index, m.update_times, stale(s), 1.0))
            )
        for name, policy in POLICIES.items():
            tables[name] = {
                str(b): asdict(mean(replay(m.losses, m.update_index, m.update_times, policy, b)))
                for b in BUDGETS
                if b < 1
            }
        out["runs"][label] = {
            "samples": int(m.losses.shape[1]),
            "checkpoints": int(m.losses.shape[0]),
            "tables": tables,
            "bias": bias(m.losses, m.update_index, m.update_times, 0.1),
        }
        if label == RUNS[0][0]:
            for b in BUDGETS[1:]:
                rows = replay(m.losses, m.update_index, m.update_times, POLICIES["drift"], b)
                series[f"budget {b:g}"] = [r.jaccard for r in rows]
            rows = replay(m.losses, m.update_index, m.update_times, stale(1), 1.0)
            series["no budget, 1 update stale"] = [r.jaccard for r in rows]
    plot_series(series, Path(tempfile.gettempdir()) / "budget_fidelity.png" if toy else PLOT)
    return out


def plot_series(series: dict[str, list[float]], path: Path) -> None:
    """Jaccard against full scoring at each budgeted checkpoint, one line per budget."""
    from matplotlib.figure import Figure

    from common.api.plots import png

    figure = Figure(figsize=(7, 3.6))
    ax = figure.subplots()
    for label, values in series.items():
        style = "--" if "stale" in label else "-"
        ax.plot(range(3, 3 + len(values)), values, style, label=label)
    ax.set_xlabel("update")
    ax.set_ylabel("Jaccard with full scoring's window")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("alpaca_en_demo, lr 5e-4: the served window against full scoring")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png(figure))


SECTION = "## 13. Scoring budget: how close to full scoring"


def render(r: dict[str, Any]) -> list[str]:
    out = [SECTION, ""]
    if "error" in r:
        return out + ["Failed:", "", "```", r["error"], "```", ""]
    out += [
        f"Sync runs of {r['updates']} updates {r['every']} steps apart (batch 4, LoRA r 8 on "
        "the tiny model), every checkpoint scored in full; each policy is then replayed over "
        "their losses, seeing only the samples it measures, and its window and weights are "
        "compared with full scoring's at every checkpoint after the first with a window (the "
        "initial checkpoint and the first with a window are scored in full under every "
        "budget). J: Jaccard index of the two windows; TV: total-variation distance of the "
        "weights; in: the share of draws inside full scoring's window (`bench/fidelity.py`).",
        "",
    ]
    for label, run in r["runs"].items():
        t = run["tables"]
        budgets = [str(b) for b in BUDGETS if b < 1]
        stale_cells = ", ".join(
            f"{s} stale: J {t[f'stale-{s}']['jaccard']:.2f}, TV {t[f'stale-{s}']['tv']:.2f}"
            for s in STALE
        )
        out += [
            f"**{label}** ({run['samples']} samples, {run['checkpoints']} checkpoints). No "
            f"budget, a full pass {stale_cells}.",
            "",
            "| policy | " + " | ".join(f"budget {b}: J / TV / in" for b in budgets) + " |",
            "|---|" + "---|" * len(budgets),
        ]
        for name in POLICIES:
            cells = [
                f"{t[name][b]['jaccard']:.2f} / {t[name][b]['tv']:.2f} / {t[name][b]['inside']:.2f}"
                for b in budgets
            ]
            shown = f"**{name}** (shipped)" if name == "drift" else name
            out.append(f"| {shown} | " + " | ".join(cells) + " |")
        b = run["bias"]
        out += [
            "",
            f"Bias at budget 0.1 (full reduction - estimate, mean over the samples not measured): "
            f"stale {b['stale']:+.4f}, corrected {b['corrected']:+.4f}.",
            "",
        ]
    out += [f"![Jaccard per update]({os.path.relpath(PLOT, ROOT)})", ""]
    return out
