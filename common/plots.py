"""Pictures of the selection, drawn headless with matplotlib: PNG bytes for the scorer's plot
endpoints and for reports. Each function builds a Figure from plain arrays (pure, testable);
`png` renders one."""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

WINDOW_COLOUR = "tab:orange"


def deltas_by_rank(
    deltas: np.ndarray,
    *,
    window: tuple[int, int] | None,
    truncated_at: int | None,
    title: str,
    groups: Sequence[str] | None = None,
) -> Figure:
    """Loss reduction (initial − current) by rank, largest first, with the window's ranks
    shaded and the rank where reductions turn negative marked. deltas: sorted descending (one
    per ranked sample); groups: a label per ranked sample, to colour them by."""
    figure = Figure(figsize=(7, 4))
    ax = figure.subplots()
    ranks = np.arange(deltas.size)
    if groups is None:
        ax.plot(ranks, deltas, ".", markersize=3, color="tab:blue", label="samples")
    else:
        labels = np.asarray(groups)
        for name in sorted(set(labels.tolist())):
            chosen = labels == name
            ax.plot(ranks[chosen], deltas[chosen], ".", markersize=3, label=str(name))
    if window is not None and window[1] > window[0]:
        ax.axvspan(window[0], window[1], color=WINDOW_COLOUR, alpha=0.25, label="window")
    if truncated_at is not None:
        ax.axvline(truncated_at, color="tab:red", linestyle="--", label="δ turns negative")
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xlabel("rank (largest loss reduction first)")
    ax.set_ylabel("δ = initial loss − current loss")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize="small")
    figure.tight_layout()
    return figure


def png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()
