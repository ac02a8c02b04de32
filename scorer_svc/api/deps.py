"""Typed dependencies: the API state and the services it holds, a database session per request,
the run in the path and the scored checkpoint a request names."""

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Path, Query, Request
from pydantic import StringConstraints
from sqlalchemy.orm import Session

from common.api.schemas import ErrorBody, Pending, RunOrder, RunStatus
from common.validation import KEY_CHARS, MAX_KEY_CHARS, MAX_TAG_VALUE_CHARS
from common.wire.errors import UnknownRun
from common.wire.protocol import MAX_STEP
from scorer_svc.api.errors import DatabaseRefused, NotScoredYet
from scorer_svc.api.rankings import Rankings
from scorer_svc.api.run_texts import RunTexts
from scorer_svc.api.state import ApiState
from scorer_svc.scoring.weights import WeightsCache
from scorer_svc.storage import checkpoints as checkpoint_store
from scorer_svc.storage import runs as run_store
from scorer_svc.storage.failures import UnrecordedFailures
from scorer_svc.storage.tables import FAILED, SCORED, SUPERSEDED, CheckpointRow, Run


def get_api(request: Request) -> ApiState:
    return request.app.state.api


ApiDep = Annotated[ApiState, Depends(get_api)]


def get_session(api: ApiDep) -> Iterator[Session]:
    """A session; none while the database gave a damaged read lately (503 at once)."""
    refused = api.database.refusing()
    if refused is not None:
        raise DatabaseRefused(refused)
    with api.sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def get_weights_cache(api: ApiDep) -> WeightsCache:
    return api.weights


WeightsCacheDep = Annotated[WeightsCache, Depends(get_weights_cache)]


def get_run_texts(api: ApiDep) -> RunTexts:
    return api.run_texts


RunTextsDep = Annotated[RunTexts, Depends(get_run_texts)]


def get_rankings(api: ApiDep) -> Rankings:
    return api.rankings


RankingsDep = Annotated[Rankings, Depends(get_rankings)]


def get_failures(api: ApiDep) -> UnrecordedFailures:
    return api.failures


FailuresDep = Annotated[UnrecordedFailures, Depends(get_failures)]


def get_run(
    session: SessionDep,
    run_id: Annotated[
        str, Path(min_length=1, max_length=128, description="the run's id, as its trainer named it")
    ],
) -> Run:
    run = run_store.get_run(session, run_id=run_id)
    if run is None:
        raise UnknownRun(f"no run '{run_id}'; GET /v1/runs lists the runs")  # 404, its code
    return run


RunDep = Annotated[Run, Depends(get_run)]


def get_step(
    step: Annotated[
        int | None, Query(ge=0, le=MAX_STEP, description="a step; default the latest scored")
    ] = None,
) -> int | None:
    return step


StepDep = Annotated[int | None, Depends(get_step)]


def _no_other_query() -> None:
    return None


def scored_checkpoint(
    after: Callable[..., object] = _no_other_query,
) -> Callable[..., CheckpointRow]:
    """The dependency giving the checkpoint a request names by `step` (default the latest
    scored): 404 when there is none, 409 when its scoring failed (in the database or only in
    memory), 410 when a newer checkpoint of its async run superseded it, 202 while it is
    pending.

    after: a dependency holding the route's other query parameters. It is solved before the
    checkpoint is looked up, so a bad value in any of them is a 422, not a 404, 409 or 202
    (FastAPI calls a dependency only when its own parameters are valid)."""

    def get_scored_checkpoint(
        session: SessionDep,
        run: RunDep,
        failures: FailuresDep,
        step: StepDep,
        api: ApiDep,
        _: Annotated[object, Depends(after)],
    ) -> CheckpointRow:
        checkpoint = _named_checkpoint(session, run, step)
        error = checkpoint.error if checkpoint.status == FAILED else failures.get(checkpoint.id)
        if error is not None:
            raise HTTPException(409, detail=f"scoring step {checkpoint.step} failed: {error}")
        if checkpoint.status == SUPERSEDED:
            raise HTTPException(
                410,
                detail=f"step {checkpoint.step} was superseded by a newer checkpoint of this "
                "async run before it was scored, and never will be: ask for the latest "
                "(no step)",
            )
        if checkpoint.status != SCORED:
            raise NotScoredYet(checkpoint.step, checkpoint.status, api.progress.get(checkpoint.id))
        return checkpoint

    return get_scored_checkpoint


ScoredCheckpointDep = Annotated[CheckpointRow, Depends(scored_checkpoint())]


@dataclass(frozen=True)
class Page:
    """A page a listing route is asked for: at most max_results items, from `start` (the
    position its page token names; None: from the first)."""

    max_results: int
    start: int | None


MAX_LOSSES_PAGE = 100_000
# The tokens this API gives are positions: decimal numbers below 2^63.
PageToken = Annotated[
    str | None,
    Query(
        pattern=r"^[0-9]{1,18}$",
        description="the next_page_token of the page before; none: the first page",
    ),
]


def paged(default: int, maximum: int) -> Callable[..., Page]:
    """The dependency reading a listing route's max_results and page_token."""

    def get_page(
        max_results: Annotated[
            int, Query(ge=1, le=maximum, description=f"items per page, at most {maximum}")
        ] = default,
        page_token: PageToken = None,
    ) -> Page:
        return Page(max_results, page_position(page_token))

    return get_page


@dataclass(frozen=True)
class StepRange:
    """The steps a history keeps: from min_step to max_step, both included (None: no bound)."""

    min_step: int | None = None
    max_step: int | None = None

    def holds(self, step: int) -> bool:
        return (self.min_step is None or step >= self.min_step) and (
            self.max_step is None or step <= self.max_step
        )


def get_step_range(
    min_step: Annotated[
        int | None, Query(ge=0, le=MAX_STEP, description="the first step kept; default the first")
    ] = None,
    max_step: Annotated[
        int | None, Query(ge=0, le=MAX_STEP, description="the last step kept; default the last")
    ] = None,
) -> StepRange:
    return StepRange(min_step, max_step)  # min_step above max_step: an empty history


StepRangeDep = Annotated[StepRange, Depends(get_step_range)]


# A page of GET /v1/runs starts at a run named by its order key and row id.
RunsPageToken = Annotated[
    str | None,
    Query(
        pattern=r"^(-1|[0-9]{1,18}):[0-9]{1,18}$",  # each fits a 64-bit integer
        description="the next_page_token of the page before, with the same filters and order; "
        "none: the first page",
    ),
]


MAX_TAG_FILTERS = 16  # each is one more EXISTS in the search
MAX_ROW_ID = 2**31 - 1  # runs.id: a 32-bit integer on PostgreSQL
# KEY=VALUE or KEY, KEY as a tag key is written (common.validation.Key)
TagFilter = Annotated[
    str,
    StringConstraints(
        pattern=rf"^{KEY_CHARS}{{1,{MAX_KEY_CHARS}}}(=.{{0,{MAX_TAG_VALUE_CHARS}}})?$"
    ),
]


@dataclass(frozen=True)
class RunsQuery:
    search: run_store.RunSearch
    max_results: int


def get_runs_query(
    status: Annotated[
        list[RunStatus] | None,
        Query(description="runs in any of these statuses (repeat the parameter for several)"),
    ] = None,
    name: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=256,
            description="runs whose run_name or run_id holds this text (any case)",
        ),
    ] = None,
    base_model: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=4096,
            description="runs whose base model path or id holds this text (any case)",
        ),
    ] = None,
    tag: Annotated[
        list[TagFilter] | None,
        Query(
            max_length=MAX_TAG_FILTERS,
            description="KEY=VALUE: runs with this tag; KEY alone: runs with a tag KEY; repeat "
            f"for several (at most {MAX_TAG_FILTERS}), which must all hold",
        ),
    ] = None,
    order_by: Annotated[
        RunOrder,
        Query(
            description="created: as the runs registered; last_step: by their latest "
            "checkpoint's step (none yet: first); DESC: the other way round"
        ),
    ] = "created",
    max_results: Annotated[
        int, Query(ge=1, le=1000, description="runs per page, at most 1000")
    ] = 100,
    page_token: RunsPageToken = None,
) -> RunsQuery:
    order, _, direction = order_by.partition(" ")
    tags = tuple(
        (key, value if sep else None) for key, sep, value in (t.partition("=") for t in tag or [])
    )
    start = None
    if page_token is not None:
        at, _, row = page_token.partition(":")
        # row ids (and created's key, the row id) are 32-bit on PostgreSQL: a larger one,
        # which no page gave, reads as the last there can be
        key = int(at) if order == "last_step" else min(int(at), MAX_ROW_ID)
        start = (key, min(int(row), MAX_ROW_ID))
    search = run_store.RunSearch(
        statuses=tuple(dict.fromkeys(status or [])),
        name=name,
        base_model=base_model,
        tags=tags,
        order=order,
        descending=direction == "DESC",
        start=start,
    )
    return RunsQuery(search, max_results)


RunsQueryDep = Annotated[RunsQuery, Depends(get_runs_query)]


def page_position(token: str | None) -> int | None:
    """The position a page token names (PageToken has checked it is one)."""
    return None if token is None else int(token)


get_loss_page = paged(1000, MAX_LOSSES_PAGE)
LossPageDep = Annotated[Page, Depends(get_loss_page)]
# The scored checkpoint of a paged route: a bad max_results or page_token is a 422 before any
# 404, 409 or 202.
ScoredPagedCheckpointDep = Annotated[CheckpointRow, Depends(scored_checkpoint(after=get_loss_page))]

# The answers scored_checkpoint adds to a route's own, for its OpenAPI description.
SCORED_CHECKPOINT_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {"model": Pending, "description": "queued or scoring; retry after Retry-After"},
    404: {"model": ErrorBody, "description": "unknown run, or a step never received"},
    409: {"model": ErrorBody, "description": "scoring this checkpoint failed"},
    410: {
        "model": ErrorBody,
        "description": "superseded: a newer checkpoint of its async run replaced it unscored",
    },
}
RUN_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "unknown run (code unknown_run)"},
}


def _named_checkpoint(session: Session, run: Run, step: int | None) -> CheckpointRow:
    if step is None:
        latest = checkpoint_store.latest_scored(session, run=run)
        if latest is None:
            raise HTTPException(404, detail=f"run {run.run_id} has no scored checkpoint yet")
        return latest
    checkpoint = checkpoint_store.get_checkpoint(session, run=run, step=step)
    if checkpoint is None:
        raise HTTPException(
            404, detail=f"run {run.run_id} has no checkpoint at step {step}; see /checkpoints"
        )
    return checkpoint
