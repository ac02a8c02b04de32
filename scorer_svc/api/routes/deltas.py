"""The ranking a checkpoint's weights come from: each sample's loss reduction, by rank."""

from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, Depends, Query

from common.api.schemas import DeltaPage, RankedSample, WindowInfo
from common.selection import rank_by_delta
from scorer_svc.api.deps import (
    SCORED_CHECKPOINT_RESPONSES,
    PageToken,
    RankingsDep,
    RunDep,
    SessionDep,
    WeightsCacheDep,
    page_position,
    scored_checkpoint,
)
from scorer_svc.storage.tables import CheckpointRow

router = APIRouter(prefix="/v1/runs/{run_id}", tags=["losses"])

MAX_RESULTS = 10_000


@dataclass(frozen=True)
class DeltaQuery:
    order: Literal["desc", "asc"]
    max_results: int
    page_token: str | None


def get_query(
    order: Annotated[
        Literal["desc", "asc"],
        Query(description="desc: the largest loss reductions first (rank 0), as the rule ranks"),
    ] = "desc",
    max_results: Annotated[
        int, Query(ge=1, le=MAX_RESULTS, description=f"items per page, at most {MAX_RESULTS}")
    ] = 100,
    page_token: PageToken = None,
) -> DeltaQuery:
    return DeltaQuery(order, max_results, page_token)


QueryDep = Annotated[DeltaQuery, Depends(get_query)]
CheckpointDep = Annotated[CheckpointRow, Depends(scored_checkpoint(after=get_query))]


@router.get(
    "/deltas", summary="Samples ranked by loss reduction", responses=SCORED_CHECKPOINT_RESPONSES
)
def deltas(
    session: SessionDep,
    cache: WeightsCacheDep,
    rankings: RankingsDep,
    run: RunDep,
    checkpoint: CheckpointDep,
    query: QueryDep,
) -> DeltaPage:
    """The ranked samples of a scored checkpoint: rank, sample index, loss reduction
    (initial − current), current and initial loss, whether the window took it, and the age
    of the sample's measurement. Samples without a finite loss are not ranked and not
    listed. Under a scoring budget the samples not measured at this checkpoint are ranked on
    estimated reductions: their loss is null and their age above 0."""
    offset = page_position(query.page_token) or 0
    served = cache.get(session, run, checkpoint)
    initial, current = rankings.losses(session, run, checkpoint)
    delta, age = rankings.deltas(session, run, checkpoint)
    ranking = rank_by_delta(delta)
    window = served.window
    in_window = np.zeros(run.n_samples, dtype=bool)
    if window is not None:
        in_window[ranking[window.start : window.end]] = True
    ranks = np.arange(ranking.size)
    if query.order == "asc":
        ranking, ranks = ranking[::-1], ranks[::-1]
    chosen = slice(offset, offset + query.max_results)
    items = [
        RankedSample(
            rank=int(rank),
            sample_index=int(i),
            delta=float(delta[i]),
            loss=float(current[i]) if np.isfinite(current[i]) else None,
            initial_loss=float(initial[i]),
            in_window=bool(in_window[i]),
            age=int(age[i]),
        )
        for rank, i in zip(ranks[chosen], ranking[chosen], strict=True)
    ]
    following = offset + query.max_results
    return DeltaPage(
        run_id=run.run_id,
        step=checkpoint.step,
        update_index=checkpoint.update_index,
        window=WindowInfo(start=window.start, end=window.end, truncated_at=window.truncated_at)
        if window is not None
        else None,
        n_ranked=int(ranking.size),
        n_measured=served.n_measured,
        mean_age=served.mean_age,
        items=items,
        next_page_token=str(following) if following < ranking.size else None,
    )
