"""Pictures of a run as PNG: the loss reduction by rank at a checkpoint (optionally coloured
by a column of the dataset), and chosen samples' loss across checkpoints."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Query, Response
from sqlalchemy.orm import Session

from common.api.plots import deltas_by_rank, png, trajectories
from common.api.schemas import ErrorBody
from common.data.datasets import MAX_FIELD_NAME, Row, Scalar
from scorer_svc.api.deps import (
    SCORED_CHECKPOINT_RESPONSES,
    ApiDep,
    FailuresDep,
    RankingsDep,
    RunDep,
    RunTextsDep,
    SessionDep,
    StepDep,
    WeightsCacheDep,
    scored_checkpoint,
)
from scorer_svc.api.rankings import Rankings
from scorer_svc.api.run_texts import DATASET_RESPONSES
from scorer_svc.storage import losses as loss_store
from scorer_svc.storage.tables import CheckpointRow, Run

router = APIRouter(prefix="/v1/runs/{run_id}/plots", tags=["plots"])

PNG_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {}}, "description": "the picture"}
}
MAX_TRAJECTORIES = 20  # samples in one trajectories picture
DEFAULT_SIDE = 5  # samples per side when neither indices nor top/bottom is given
MISSING = "(none)"  # the label of a sample whose row lacks the column


def get_color_by(
    color_by: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=MAX_FIELD_NAME,
            description="a column of the dataset's rows (a group, a source...) to colour by",
        ),
    ] = None,
) -> str | None:
    return color_by


@router.get(
    "/deltas",
    summary="Loss reduction by rank, as a picture",
    response_class=Response,
    responses={
        **SCORED_CHECKPOINT_RESPONSES,
        **DATASET_RESPONSES,
        409: {
            "model": ErrorBody,
            "description": "scoring this checkpoint failed, or (with color_by) the dataset can "
            "no longer be read or changed since registration",
        },
        **PNG_RESPONSE,
    },
)
def plot_deltas(
    texts: RunTextsDep,
    session: SessionDep,
    cache: WeightsCacheDep,
    rankings: RankingsDep,
    run: RunDep,
    checkpoint: Annotated[CheckpointRow, Depends(scored_checkpoint(after=get_color_by))],
    color_by: Annotated[str | None, Depends(get_color_by)],
) -> Response:
    """A PNG of the loss reduction by rank at a scored checkpoint, the window's ranks shaded
    and the rank where reductions turn negative marked; with color_by, each sample coloured by
    the value of that column of its dataset row (the ten most frequent values named, the rest
    grey as "other")."""
    served = cache.get(session, run, checkpoint)
    delta, ranking = rankings.ranking(session, run, checkpoint)
    window = served.window
    title = f"run {run.run_id}, step {checkpoint.step} (update {checkpoint.update_index})"
    groups = None
    if color_by is not None:
        labels = field_labels(texts.rows(run), color_by, run.run_id)
        groups = [labels[i] for i in ranking]
        title += f", by {color_by}"
    figure = deltas_by_rank(
        delta[ranking],
        window=(window.start, window.end) if window is not None else None,
        truncated_at=window.truncated_at if window is not None else None,
        title=title,
        groups=groups,
    )
    return Response(png(figure), media_type="image/png")


def field_labels(rows: Sequence[Row], name: str, run_id: str) -> list[str]:
    """Each sample's value of the column `name`, as a legend label; 422 naming the columns
    there are when no row has it."""
    if not any(name in row.fields for row in rows):
        there = sorted({field for row in rows for field in row.fields})
        listed = ", ".join(there) if there else "none: its rows hold their text only"
        raise HTTPException(
            422,
            detail=f"color_by: the dataset of run {run_id} has no column '{name}' to colour by; "
            f"its columns besides the text: {listed}",
        )
    return [_label(row.fields.get(name, MISSING)) for row in rows]


def _label(value: Scalar) -> str:
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass(frozen=True)
class Chosen:
    """The samples a trajectories picture shows: these indices, and the top and bottom ones
    by loss reduction at a step."""

    indices: tuple[int, ...]
    top: int
    bottom: int


MAX_SIDE = MAX_TRAJECTORIES // 2


def get_chosen(
    indices: Annotated[
        str | None,
        Query(
            pattern=rf"^\d{{1,10}}(,\d{{1,10}}){{0,{MAX_TRAJECTORIES - 1}}}$",
            description=f"sample indices, comma-separated (at most {MAX_TRAJECTORIES})",
            examples=["0,7,42"],
        ),
    ] = None,
    top: Annotated[
        int | None,
        Query(ge=0, le=MAX_SIDE, description="how many of the samples whose loss fell most"),
    ] = None,
    bottom: Annotated[
        int | None,
        Query(
            ge=0, le=MAX_SIDE, description="how many of the samples whose loss fell least (or rose)"
        ),
    ] = None,
) -> Chosen:
    chosen = tuple(dict.fromkeys(int(i) for i in indices.split(","))) if indices else ()
    if not chosen and top is None and bottom is None:
        return Chosen((), DEFAULT_SIDE, DEFAULT_SIDE)
    return Chosen(chosen, top or 0, bottom or 0)


@router.get(
    "/trajectories",
    summary="Chosen samples' loss across checkpoints, as a picture",
    response_class=Response,
    responses={**SCORED_CHECKPOINT_RESPONSES, **PNG_RESPONSE},
)
def plot_trajectories(
    api: ApiDep,
    session: SessionDep,
    rankings: RankingsDep,
    failures: FailuresDep,
    run: RunDep,
    chosen: Annotated[Chosen, Depends(get_chosen)],
    step: StepDep,
) -> Response:
    """A PNG of each chosen sample's loss at every scored checkpoint: the samples of
    `indices`, with the `top` samples whose loss fell most and the `bottom` ones whose loss
    fell least (or rose) by `step` (default the latest scored); 5 and 5 when nothing is
    given."""
    past = [i for i in chosen.indices if i >= run.n_samples]
    if past:
        raise HTTPException(
            404, detail=f"sample {past[0]} does not exist: run {run.run_id} has {run.n_samples}"
        )
    labels = {i: f"#{i}" for i in chosen.indices}
    title = f"run {run.run_id}: loss of samples {', '.join(map(str, chosen.indices))}"
    if chosen.top or chosen.bottom:
        # the checkpoint as every route names it: 404, 409 or 202 when it is not scored
        checkpoint = scored_checkpoint()(
            session=session, run=run, failures=failures, step=step, api=api, _=None
        )
        labels = {**_ends(session, rankings, run, checkpoint, chosen), **labels}
        title = f"run {run.run_id}: loss fell most and least by step {checkpoint.step}"
        if chosen.indices:
            title += ", and the samples chosen"
    rows = loss_store.sample_histories(session, run=run, sample_indices=list(labels))
    histories = {
        label: [(s, loss) for s, _, loss in rows[i] if loss is not None and np.isfinite(loss)]
        for i, label in labels.items()
    }
    return Response(png(trajectories(histories, title)), media_type="image/png")


def _ends(
    session: Session, rankings: Rankings, run: Run, checkpoint: CheckpointRow, chosen: Chosen
) -> dict[int, str]:
    """The samples whose loss fell most (chosen.top) and least (chosen.bottom) by the
    checkpoint, labelled; a sample on both ends once."""
    _, ranking = rankings.ranking(session, run, checkpoint)
    labels = {int(i): f"#{i} (fell most)" for i in ranking[: chosen.top]}
    for i in ranking[::-1][: chosen.bottom]:
        labels.setdefault(int(i), f"#{i} (fell least)")
    return labels
