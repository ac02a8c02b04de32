"""A sample's own text, and its dataset row's other columns, read again from the run's dataset
and served only while it tokenizes to the run's fingerprint (scorer_svc.api.run_texts)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException
from fastapi import Path as PathParam

from common.api.schemas import ErrorBody, SampleText, Turn
from common.wire.protocol import MAX_STEP
from scorer_svc.api.deps import RunDep, RunTextsDep
from scorer_svc.api.run_texts import DATASET_RESPONSES

router = APIRouter(prefix="/v1/runs/{run_id}", tags=["samples"])


@router.get(
    "/samples/{index}",
    summary="A sample's text and its row's other columns",
    responses={
        404: {"model": ErrorBody, "description": "unknown run, or no such sample"},
        **DATASET_RESPONSES,
    },
)
def sample_text(
    texts: RunTextsDep,
    run: RunDep,
    index: Annotated[int, PathParam(ge=0, le=MAX_STEP, description="the sample's index")],
) -> SampleText:
    """The sample's system prompt and turns as the run trains on them, with the dataset
    row's other scalar columns as `fields`."""
    if index >= run.n_samples:
        raise HTTPException(
            404, detail=f"sample {index} does not exist: run {run.run_id} has {run.n_samples}"
        )
    row = texts.rows(run)[index]
    return SampleText(
        run_id=run.run_id,
        sample_index=index,
        system=row.sample.system or None,
        turns=[Turn(user=user, assistant=assistant) for user, assistant in row.sample.turns],
        fields=row.fields,
    )
