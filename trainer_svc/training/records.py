"""What the trainer leaves in output_dir besides the model: JSON-lines records and the loss plot.

- selections.jsonl: one line per update (the draw and where its weights came from);
- trained_samples.jsonl: one line per optimizer step, the sample indices actually trained
  (under torchrun, every rank's, and each rank's share);
- training_loss.png (plot_loss): the training loss from the Trainer's log history.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from trainer_svc.training.distributed import Ranks

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
    """Collects the indices of each micro-batch, and writes one line per step when flushed:
    {"step", "indices"}; under torchrun rank 0 writes every rank's, in rank order, with
    "by_rank" (each rank's share). Every rank flushes at the same points (a collective)."""

    def __init__(self, record: JsonlRecord | None, ranks: Ranks | None = None):
        self.record = record  # rank 0's; None on the others
        self.ranks = ranks or Ranks()
        self._rows: dict[int, list[int]] = {}

    def add(self, step: int, indices: Iterable[int]) -> None:
        self._rows.setdefault(step, []).extend(int(i) for i in indices)

    def flush(self) -> None:
        rows, self._rows = self._rows, {}
        if self.ranks.world == 1:
            for step in sorted(rows):
                self._append({"step": step, "indices": rows[step]})
            return
        parts = self.ranks.gather({str(step): indices for step, indices in rows.items()})
        if parts is None:
            return  # not rank 0
        for step in sorted({int(key) for part in parts for key in part}):
            by_rank = [part.get(str(step), []) for part in parts]
            indices = [i for share in by_rank for i in share]
            self._append({"step": step, "indices": indices, "by_rank": by_rank})

    def _append(self, row: dict[str, Any]) -> None:
        if self.record is not None:
            self.record.append(row)


def eval_history(log_history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The evaluation rows Trainer logged (eval_loss, eval_runtime, ..., step), in order."""
    return [row for row in log_history if "eval_loss" in row]


def plot_loss(
    log_history: list[dict[str, Any]], path: Path, update_steps: list[int] | None = None
) -> Path | None:
    """A PNG of the logged training loss by step, raw and smoothed, with the update steps
    marked and the eval loss when one was logged; None when no loss was logged."""
    from common.api.plots import png, training_loss

    points = [(row["step"], row["loss"]) for row in log_history if "loss" in row and "step" in row]
    if not points:
        logger.warning("no training loss was logged (logging_steps too large?); no plot written")
        return None
    steps, losses = zip(*points, strict=True)
    evals = [(row["step"], row["eval_loss"]) for row in eval_history(log_history)]
    figure = training_loss(steps, losses, update_steps=update_steps or (), eval_points=evals)
    path.write_bytes(png(figure))
    return path
