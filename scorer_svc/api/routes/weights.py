"""Sampling weights of a checkpoint, as JSON or as N little-endian float32."""

from typing import Annotated

import numpy as np
from fastapi import APIRouter, Header, Response

from common.api.schemas import WeightsBody, WindowInfo
from scorer_svc.api.deps import (
    SCORED_CHECKPOINT_RESPONSES,
    RunDep,
    ScoredCheckpointDep,
    SessionDep,
    WeightsCacheDep,
)
from scorer_svc.scoring.weights import ServedWeights
from scorer_svc.storage.tables import Run

router = APIRouter(prefix="/v1/runs/{run_id}", tags=["weights"])

OCTET = "application/octet-stream"


@router.get(
    "/weights",
    summary="A checkpoint's sampling weights",
    response_model=WeightsBody,
    responses={**SCORED_CHECKPOINT_RESPONSES, 200: {"content": {OCTET: {}}}},
)
def get_weights(
    session: SessionDep,
    cache: WeightsCacheDep,
    run: RunDep,
    checkpoint: ScoredCheckpointDep,
    accept: Annotated[
        str | None,
        Header(description="application/octet-stream: N little-endian float32, no JSON"),
    ] = None,
) -> Response | WeightsBody:
    """The Delta Loss sampling weights of a scored checkpoint (default the latest): uniform
    for the run's first, through the window at its update otherwise. 202 while the checkpoint
    is queued or being scored, with progress; 409 when scoring it failed."""
    weights = cache.get(session, run, checkpoint)
    if accept and OCTET in accept:
        headers = {"X-Step": str(weights.step), "X-Update-Index": str(weights.update_index)}
        data = weights.values.astype("<f4").tobytes()
        return Response(content=data, media_type=OCTET, headers=headers)
    return weights_body(run, weights)


def weights_body(run: Run, weights: ServedWeights) -> WeightsBody:
    window = weights.window
    return WeightsBody(
        run_id=run.run_id,
        step=weights.step,
        update_index=weights.update_index,
        t=window.t if window else None,
        T=window.T if window else None,
        u=window.u if window else None,
        window=WindowInfo(start=window.start, end=window.end, truncated_at=window.truncated_at)
        if window
        else None,
        n_samples=run.n_samples,
        n_ranked=weights.n_ranked,
        delta_mean_in_window=weights.delta_in_window,
        delta_mean_outside=weights.delta_outside,
        n_measured=weights.n_measured,
        mean_age=weights.mean_age,
        weights=np.asarray(weights.values, dtype=np.float64).tolist(),
    )
