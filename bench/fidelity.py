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
- `drift`: the shipped policy (common.budget): deadlines, then window edges; the affine drift;
- `drift-rr`: the same estimate with round-robin choice (the choice's share of the result);
- `drift-relaxed`: the shipped policy with a deadline twice as long (room for the edges).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

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
Policy = Callable[[np.ndarray, np.ndarray, np.ndarray, int, float], Iterator[np.ndarray]]


def stale(s: int) -> Policy:
    def replay(losses, index, _budget, _u, _ws):  # noqa: ANN001, ANN202
        for c in range(2, len(losses)):
            yield losses[0] - losses[max(1, c - s)]

    return replay


def _round_robin(n: int, k: int, turn: int) -> np.ndarray:
    start = (turn * k) % n
    return (np.arange(start, start + k) % n).astype(np.int64)


def naive(losses, index, b, _u, _ws):  # noqa: ANN001, ANN201
    n = losses.shape[1]
    k = budget.samples_per_checkpoint(b, n)
    last = losses[0] - losses[1]
    for c in range(2, len(losses)):
        chosen = _round_robin(n, k, c - 2)
        last = last.copy()
        last[chosen] = (losses[0] - losses[c])[chosen]
        yield last


def percentile(losses, index, b, _u, _ws):  # noqa: ANN001, ANN201
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
        *(float(np.mean([getattr(r, f) for r in rows])) for f in Fidelity.__annotations__)
    )


def table(losses: np.ndarray, update_index: np.ndarray, update_times: int) -> dict[str, dict]:
    """policy -> budget -> mean Fidelity (and stale-s -> None -> ...)."""
    out: dict[str, dict] = {}
    for s in STALE:
        out[f"stale-{s}"] = {"-": mean(replay(losses, update_index, update_times, stale(s), 1.0))}
    for name, policy in POLICIES.items():
        out[name] = {
            b: mean(replay(losses, update_index, update_times, policy, b)) for b in BUDGETS if b < 1
        }
    return out
