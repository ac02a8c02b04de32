"""`trainer-svc report OUTPUT_DIR [--scorer URL] [--color-by FIELD] [--samples 1,2,3]`: the
pictures of a run, and a page that shows them, in OUTPUT_DIR/report/.

From the run's own files: the training loss (raw and smoothed, the update steps marked, the
eval loss when there is one), the eval loss on its own (training_eval_loss.png, as
LLaMA-Factory names it) when the run logged one, the window's position over the updates
(selections.jsonl), and how often each sample was trained (trained_samples.jsonl). With the
scorer: the loss reduction by rank at each update, the window shaded (its samples coloured by
a column of the dataset with color_by), the loss trajectories of the samples whose loss fell
most and least by the last update, and those of chosen samples.
"""

from __future__ import annotations

import html
import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.api import plots
from common.api.client import ApiError, NotFound, ScorerApi
from trainer_svc.training.records import (
    LOSS_PLOT,
    SELECTIONS,
    TRAINED,
    eval_history,
    plot_loss,
    read_jsonl,
)

logger = logging.getLogger(__name__)

REPORT_DIR = "report"
TOP_K = 5  # samples per side in the trajectories
EVAL_LOSS_PLOT = "training_eval_loss.png"
MAX_CHOSEN = 20  # chosen samples in one trajectories picture


class ReportError(ValueError):
    """The folder is not a run's output_dir, or its records cannot be read."""


@dataclass
class Report:
    folder: Path
    pictures: list[tuple[str, str]] = field(default_factory=list)  # (file name, caption)

    def add(self, name: str, data: bytes, caption: str) -> None:
        (self.folder / name).write_bytes(data)
        self.pictures.append((name, caption))

    def write_page(self, title: str) -> Path:
        items = "\n".join(
            f'<figure><img src="{html.escape(name)}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            for name, caption in self.pictures
        )
        page = self.folder / "index.html"
        page.write_text(
            '<!doctype html><html><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;max-width:760px;margin:2em auto}"
            "img{max-width:100%}figure{margin:2em 0}</style></head>"
            f"<body><h1>{html.escape(title)}</h1>{items}</body></html>\n",
            encoding="utf-8",
        )
        return page


def write_report(
    output_dir: Path,
    scorer_url: str | None = None,
    token: str | None = None,
    *,
    color_by: str | None = None,
    samples: Sequence[int] = (),
) -> Path:
    """Write every picture the run's files (and the scorer, when given) allow; the page's path.
    color_by: a column of the dataset's rows to colour the loss reductions by rank by;
    samples: sample indices whose loss trajectories to draw besides the top and bottom ones
    (both are read from the scorer)."""
    selections = output_dir / SELECTIONS
    if not selections.is_file():
        raise ReportError(
            f"{output_dir} holds no {SELECTIONS}: give the output_dir of a trainer-svc run"
        )
    if scorer_url is None and (color_by is not None or samples):
        raise ReportError("--color-by and --samples read the scorer: give --scorer URL too")
    if len(samples) > MAX_CHOSEN:
        raise ReportError(f"--samples names {len(samples)} samples; at most {MAX_CHOSEN}")
    rows = read_jsonl(selections)
    folder = output_dir / REPORT_DIR
    folder.mkdir(exist_ok=True)
    report = Report(folder)
    trained_file = output_dir / TRAINED
    trained = [row["indices"] for row in read_jsonl(trained_file)] if trained_file.is_file() else []
    n = _n_samples(trained, rows)
    _loss(report, output_dir, rows)
    _windows(report, rows, n)
    _draw_counts(report, trained, n)
    if scorer_url is not None:
        run_id = json.loads((output_dir / "run.json").read_text())["run_id"]
        with ScorerApi(scorer_url, token=token, timeout=60) as api:
            scorer = Scorer(api, run_id)
            _deltas(report, scorer, rows, color_by)
            _trajectories(report, scorer, rows)
            _chosen(report, scorer, samples)
    return report.write_page(f"Delta Loss selection: {output_dir.name}")


def _n_samples(trained: list[list[int]], rows: list[dict[str, Any]]) -> int:
    """The samples the records name: one past the largest index trained or drawn."""
    seen = (i for step in trained for i in step)
    drawn = (i for row in rows for i in row["sampled_indices"])
    return max((*seen, *drawn), default=-1) + 1


def _loss(report: Report, output_dir: Path, rows: list[dict[str, Any]]) -> None:
    state = output_dir / "trainer_state.json"
    if not state.is_file():
        logger.warning("%s is missing (the run did not finish): no loss plot", state)
        return
    history = json.loads(state.read_text())["log_history"]
    updates = [r["global_step"] for r in rows]
    path = plot_loss(history, report.folder / LOSS_PLOT, updates)
    if path is not None:
        report.pictures.append(
            (
                LOSS_PLOT,
                "Training loss, raw and smoothed; dotted lines: the updates, where the "
                "trainer changed the samples it trains on; green: the eval loss.",
            )
        )
    evals = [(row["step"], row["eval_loss"]) for row in eval_history(history) if "step" in row]
    if evals:
        steps, losses = zip(*evals, strict=True)
        report.add(
            EVAL_LOSS_PLOT,
            plots.png(plots.eval_loss(steps, losses, update_steps=updates)),
            "Evaluation loss at each evaluation (on the eval dataset or the val_size split); "
            "dotted lines: the updates.",
        )


def _windows(report: Report, rows: list[dict[str, Any]], n: int) -> None:
    windowed = [r for r in rows if r.get("window")]
    if not windowed:
        return
    figure = plots.window_positions(
        [r["global_step"] for r in windowed],
        [r["window"]["start"] for r in windowed],
        [r["window"]["end"] for r in windowed],
        [r["window"].get("truncated_at") for r in windowed],
        n,
    )
    report.add(
        "window.png",
        plots.png(figure),
        "Where the window sat at each update, in ranks of loss reduction (0: the largest). "
        "The published schedule slides it along a sigmoid: early updates favour the samples "
        "learnt fastest, the last ones those learnt slowest and the noise.",
    )


def _draw_counts(report: Report, trained: list[list[int]], n: int) -> None:
    if not trained or n == 0:
        return
    counts = Counter(i for step in trained for i in step)
    values = np.array([counts.get(i, 0) for i in range(n)])
    report.add(
        "draw_counts.png",
        plots.png(plots.draw_counts(values)),
        "How often each sample was trained, over the whole run.",
    )


@dataclass(frozen=True)
class Scorer:
    """The scorer's answers about one run, through its typed client."""

    api: ScorerApi
    run_id: str

    def history(self, index: int) -> list[tuple[int, float]] | None:
        """(step, loss) of a sample at every scored checkpoint; None when there is no such
        sample."""
        try:
            body = self.api.history(self.run_id, index)
        except NotFound:
            return None
        return [(p.step, p.loss) for p in body.history if p.loss is not None]

    def deltas_picture(self, step: int, color_by: str | None) -> bytes:
        extra = {} if color_by is None else {"color_by": color_by}
        return self.api.plot_deltas(self.run_id, step=step, **extra)


def _deltas(
    report: Report, scorer: Scorer, rows: list[dict[str, Any]], color_by: str | None
) -> None:
    """The loss reduction by rank at each update's weights step, coloured by color_by while
    the scorer can read the dataset's rows (it says why when it cannot)."""
    for step in _weights_steps(rows):
        try:
            try:
                picture = scorer.deltas_picture(step, color_by)
            except ApiError as exc:
                if color_by is None or exc.status not in (403, 409, 422):
                    raise
                if exc.status == 422:
                    raise ReportError(f"--color-by {color_by}: {exc.detail}") from exc
                logger.warning("not coloured by %s: %s", color_by, exc.detail)
                color_by = None
                picture = scorer.deltas_picture(step, None)
        except ApiError as exc:
            logger.warning("no loss-reduction plot for step %d: HTTP %d", step, exc.status)
            continue
        by = f", each sample coloured by its '{color_by}'" if color_by is not None else ""
        report.add(
            f"deltas_step_{step}.png",
            picture,
            f"Loss reduction by rank at step {step}, the window shaded{by}.",
        )


def _weights_steps(rows: list[dict[str, Any]]) -> list[int]:
    """The steps whose weights the updates drew from, in order, each once."""
    steps = [r["weights_step"] for r in rows if r.get("weights_step") is not None]
    return list(dict.fromkeys(steps))


def _trajectories(report: Report, scorer: Scorer, rows: list[dict[str, Any]]) -> None:
    steps = _weights_steps(rows)
    if not steps:
        return
    last = steps[-1]
    try:
        ends = {
            order: scorer.api.deltas(scorer.run_id, step=last, order=order, max_results=TOP_K)
            for order in ("desc", "asc")
        }
    except ApiError as exc:
        logger.warning("no trajectories: the ranking at step %d: %s", last, exc.detail)
        return
    histories: dict[str, list[tuple[int, float]]] = {}
    for order, page in ends.items():
        side = "fell most" if order == "desc" else "fell least"
        for item in page.items:
            index = item.sample_index
            histories[f"#{index} ({side})"] = scorer.history(index) or []
    report.add(
        "trajectories.png",
        plots.png(
            plots.trajectories(
                histories, f"loss of the samples whose loss fell most and least by step {last}"
            )
        ),
        f"Loss trajectories of the {TOP_K} samples whose loss fell most by step {last}, and "
        f"the {TOP_K} whose loss fell least (or rose).",
    )


def _chosen(report: Report, scorer: Scorer, samples: Sequence[int]) -> None:
    """The loss trajectories of the samples asked for (--samples); unknown ones left out."""
    histories: dict[str, list[tuple[int, float]]] = {}
    for index in dict.fromkeys(samples):
        points = scorer.history(index)
        if points is None:
            logger.warning("--samples: run %s has no sample %d; left out", scorer.run_id, index)
            continue
        histories[f"#{index}"] = points
    if not histories:
        return
    named = ", ".join(label.lstrip("#") for label in histories)
    report.add(
        "trajectories_samples.png",
        plots.png(plots.trajectories(histories, f"loss of samples {named}")),
        f"Loss trajectories of the samples asked for: {named}.",
    )
