"""A run's logged metrics, as MLflow serves them: its trainer posts batches (loss, eval loss,
learning rate, the selection's figures), and anyone reads each metric's latest value or one
metric's history over a step range."""

from typing import Annotated

from fastapi import APIRouter, Query

from common.api.schemas import (
    LatestMetric,
    MetricBatch,
    MetricHistory,
    MetricKey,
    MetricsStored,
    MetricValue,
    RunMetrics,
)
from scorer_svc.api.deps import (
    RUN_RESPONSES,
    ApiDep,
    PageToken,
    RunDep,
    SessionDep,
    StepRangeDep,
    page_position,
)
from scorer_svc.api.write_access import (
    WRITE_REFUSED,
    RunTokenDep,
    check_authorized,
    check_writable,
)
from scorer_svc.storage import metrics as metric_store

router = APIRouter(prefix="/v1/runs/{run_id}/metrics", tags=["metrics"])

MAX_HISTORY_PAGE = 10_000


@router.post("", summary="Log a run's metrics", responses={**RUN_RESPONSES, 403: WRITE_REFUSED})
def log_metrics(
    session: SessionDep, run: RunDep, body: MetricBatch, api: ApiDep, run_token: RunTokenDep = None
) -> MetricsStored:
    """Store the points; a key and step already stored is replaced (a resumed run logs its
    steps after the checkpoint again). The trainer posts what it logs, in batches. Authorized
    as reporting the run's end is: the scorer's token, else the run's own in X-Run-Token."""
    check_writable(run, api, there="log its metrics there")
    check_authorized(run, api.settings, run_token, f"logging metrics of run {run.run_id}")
    points = [metric_store.Point(p.key, p.step, p.value) for p in body.metrics]
    stored = metric_store.store_metrics(session, run=run, points=points)
    return MetricsStored(run_id=run.run_id, stored=stored)


@router.get("", summary="A run's latest metrics", responses=RUN_RESPONSES)
def latest_metrics(session: SessionDep, run: RunDep) -> RunMetrics:
    """Each metric the run logged, with its value at the latest step it was logged at."""
    rows = metric_store.latest_metrics(session, run=run)
    return RunMetrics(
        run_id=run.run_id,
        metrics=[
            LatestMetric(key=r.key, step=r.step, value=r.value, logged_at=r.logged_at) for r in rows
        ],
    )


@router.get("/history", summary="A metric's history", responses=RUN_RESPONSES)
def metric_history(
    session: SessionDep,
    run: RunDep,
    key: Annotated[MetricKey, Query(description="the metric: loss, eval_loss, learning_rate...")],
    steps: StepRangeDep,
    max_results: Annotated[
        int,
        Query(
            ge=1, le=MAX_HISTORY_PAGE, description=f"points per page, at most {MAX_HISTORY_PAGE}"
        ),
    ] = 1000,
    page_token: PageToken = None,
) -> MetricHistory:
    """The metric's values by step (within min_step and max_step when given), a page at a
    time; an unknown key has an empty history."""
    rows = metric_store.metric_history(
        session,
        run=run,
        key=key,
        min_step=steps.min_step,
        max_step=steps.max_step,
        from_step=page_position(page_token),
        limit=max_results + 1,
    )
    following = rows[max_results] if len(rows) > max_results else None
    return MetricHistory(
        run_id=run.run_id,
        key=key,
        history=[
            MetricValue(step=r.step, value=r.value, logged_at=r.logged_at)
            for r in rows[:max_results]
        ],
        next_page_token=None if following is None else str(following.step),
    )
