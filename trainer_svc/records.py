"""What the trainer leaves in output_dir besides the model: JSON-lines records and the loss plot.

- selections.jsonl: one line per update (the draw and where its weights came from);
- trained_samples.jsonl: one line per optimizer step, the sample indices actually trained;
- training_loss.png (plot_loss): the training loss from the Trainer's log history.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SELECTIONS = "selections.jsonl"
TRAINED = "trained_samples.jsonl"
LOSS_PLOT = "training_loss.png"


class JsonlRecord:
    """Appends one JSON object per line, flushed so a crash keeps what was written."""

    def __init__(self, path: Path, *, truncate: bool = False):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if truncate:
            path.write_text("", encoding="utf-8")

    def append(self, row: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row, separators=(",", ":")) + "\n")


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    text = Path(path).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


class TrainedSamples:
    """Collects the indices of each micro-batch; writes one line when the step changes."""

    def __init__(self, record: JsonlRecord):
        self.record = record
        self._step: int | None = None
        self._indices: list[int] = []

    def add(self, step: int, indices: Iterable[int]) -> None:
        if self._step is not None and step != self._step:
            self.flush()
        self._step = step
        self._indices.extend(int(i) for i in indices)

    def flush(self) -> None:
        if self._step is not None:
            self.record.append({"step": self._step, "indices": self._indices})
        self._step, self._indices = None, []


def eval_history(log_history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The evaluation rows Trainer logged (eval_loss, eval_runtime, ..., step), in order."""
    return [row for row in log_history if "eval_loss" in row]


def plot_loss(log_history: list[dict[str, Any]], path: Path) -> Path | None:
    """A PNG of the logged training loss by step; None when nothing was logged."""
    points = [(row["step"], row["loss"]) for row in log_history if "loss" in row and "step" in row]
    if not points:
        logger.warning("no training loss was logged (logging_steps too large?); no plot written")
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, losses = zip(*points, strict=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, losses, marker="o", markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("training loss")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
