"""Sampling weights of a checkpoint, as JSON or as N little-endian float32."""

from typing import Annotated

import numpy as np
from fastapi import APIRouter, Header, Query, Response

from common.protocol import MAX_STEP
from scorer_svc.api.deps import RunDep, SessionDep, StateDep
from scorer_svc.api.steps import scored_checkpoint
from scorer_svc.schemas import Pending, WeightsBody, WindowInfo

router = APIRouter(prefix="/v1/runs/{run_id}", tags=["weights"])

OCTET = "application/octet-stream"


@router.get(
    "/weights",
    response_model=WeightsBody,
    responses={
        202: {"model": Pending, "description": "queued or scoring; retry after Retry-After"},
        404: {"description": "unknown run, or a step never received"},
        409: {"description": "scoring this checkpoint failed"},
        200: {"content": {OCTET: {}}},
    },
)
def get_weights(
    session: SessionDep,
    state: StateDep,
    run: RunDep,
    step: Annotated[
        int | None, Query(ge=0, le=MAX_STEP, description="a step; default the latest scored")
    ] = None,
    accept: Annotated[str | None, Header()] = None,
) -> Response | WeightsBody:
    checkpoint = scored_checkpoint(session, run, step, state.failures.get)
    weights = state.weights.get(session, run, checkpoint)
    window = weights.window
    headers = {"X-Step": str(weights.step), "X-Update-Index": str(weights.update_index)}
    if accept and OCTET in accept:
        data = weights.values.astype("<f4").tobytes()
        return Response(content=data, media_type=OCTET, headers=headers)
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
        weights=np.asarray(weights.values, dtype=np.float64).tolist(),
    )
