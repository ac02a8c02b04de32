"""A typed client of the scorer's REST API: one method per route, answers read into
common.api.schemas, and every answer that is not a success raised as an ApiError that keeps
the scorer's `detail`.

    with ScorerApi("http://127.0.0.1:8000", token=...) as api:
        for run in api.all_runs(status="failed", tags={"team": "nlp"}):
            print(run.run_id, run.run_name, run.status, run.last_step)
        weights = api.weights("my-run", step=40)  # NotScoredYet while it is being scored
        frame = api.histories_frame("my-run", [0, 7], min_step=10)  # pandas, if installed

The routes that change a run (its end, its deletion) need, on a scorer without a token, the
run's own token: `run_token=` (the run_token of the trainer's run.json).

Transport failures (no answer, a refused certificate) are httpx's own exceptions. Retrying is
the caller's business: the trainer retries under its policy (trainer_svc.scorer.weights).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import httpx
from pydantic import BaseModel

from common.api.schemas import (
    CheckpointInfo,
    CheckpointPage,
    DeletedRun,
    DeltaPage,
    Health,
    LossPage,
    MetricBatch,
    MetricHistory,
    MetricPoint,
    MetricsStored,
    MetricValue,
    Pending,
    RunEnd,
    RunEnding,
    RunInfo,
    RunMetrics,
    RunOrder,
    RunPage,
    RunStatus,
    SampleHistories,
    SampleHistory,
    SampleText,
    WeightsBody,
)
from common.wire.errors import ProtocolError

if TYPE_CHECKING:
    import pandas

Model = TypeVar("Model", bound=BaseModel)
MAX_GET_INDICES = 200  # more are POSTed: a URL stays well under proxies' 8 KiB
# the header carrying a run's own token, which lets a request change that run on a scorer
# without a token
RUN_TOKEN_HEADER = "X-Run-Token"


class ApiError(ProtocolError):
    """An answer that is not a success: its HTTP status and the scorer's detail."""

    code = "api_error"

    def __init__(self, status: int, detail: str, error_code: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.error_code = error_code  # the body's `code`, where the scorer gives one


class NotScoredYet(ApiError):
    """202: the checkpoint is queued or being scored. `pending` has the progress;
    `retry_after` the seconds the scorer asks to wait."""

    code = "not_scored_yet"

    def __init__(self, pending: Pending, retry_after: float | None) -> None:
        super().__init__(202, pending.detail)
        self.pending = pending
        self.retry_after = retry_after


class ApiUnauthorized(ApiError):
    """401: the token is missing or wrong."""

    code = "unauthorized"


class NotFound(ApiError):
    """404: an unknown run (error_code unknown_run), step or sample."""

    code = "not_found"

    @property
    def unknown_run(self) -> bool:
        return self.error_code == "unknown_run"


class Conflict(ApiError):
    """409: scoring the checkpoint failed, or the run is busy."""

    code = "conflict"


ERRORS: dict[int, type[ApiError]] = {401: ApiUnauthorized, 404: NotFound, 409: Conflict}


class ScorerApi:
    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        ca_file: str | None = None,
        timeout: float = 60.0,
        client: httpx.Client | None = None,
    ) -> None:
        """ca_file: the CA bundle (PEM) an https scorer's certificate must verify against;
        None: httpx's default bundle. client: an httpx client to use instead (tests)."""
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=ca_file) if ca_file else True
        )
        self.http = client or httpx.Client(
            base_url=self.base_url, timeout=timeout, headers=headers, verify=verify
        )

    def __enter__(self) -> ScorerApi:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    # ---- the routes ----
    def health(self, *, timeout: float | None = None) -> Health:
        """GET /healthz; an unhealthy scorer (503) raises ApiError with what is wrong."""
        extra = {} if timeout is None else {"timeout": timeout}
        return self._get(Health, "/healthz", **extra)

    def runs(
        self,
        *,
        status: RunStatus | Sequence[RunStatus] | None = None,
        name: str | None = None,
        base_model: str | None = None,
        tags: Mapping[str, str | None] | None = None,
        order_by: RunOrder = "created",
        max_results: int = 100,
        page_token: str | None = None,
    ) -> RunPage:
        """A page of the runs, filtered (every filter given must hold) and ordered: status
        (one or several), name (within run_name or run_id), base_model (within its path),
        tags (key to value; a value None: the key only), order_by ("created", "last_step",
        either with " DESC")."""
        params: dict[str, Any] = {"order_by": order_by, **_page(max_results, page_token)}
        if status is not None:
            params["status"] = [status] if isinstance(status, str) else list(status)
        if name is not None:
            params["name"] = name
        if base_model is not None:
            params["base_model"] = base_model
        if tags:
            params["tag"] = [
                key if value is None else f"{key}={value}" for key, value in tags.items()
            ]
        return self._get(RunPage, "/v1/runs", params=params)

    def all_runs(self, *, max_results: int = 1000, **search: Any) -> Iterator[RunInfo]:
        """Every run `runs(**search)` finds, page after page (max_results a page)."""
        return _every(
            lambda token: self.runs(**search, max_results=max_results, page_token=token),
            lambda page: page.runs,
        )

    def run(self, run_id: str) -> RunInfo:
        return self._get(RunInfo, f"/v1/runs/{run_id}")

    def checkpoints(
        self, run_id: str, *, max_results: int = 100, page_token: str | None = None
    ) -> CheckpointPage:
        params = _page(max_results, page_token)
        return self._get(CheckpointPage, f"/v1/runs/{run_id}/checkpoints", params=params)

    def all_checkpoints(self, run_id: str) -> Iterator[CheckpointInfo]:
        return _every(
            lambda token: self.checkpoints(run_id, max_results=1000, page_token=token),
            lambda page: page.checkpoints,
        )

    def weights(self, run_id: str, *, step: int | None = None) -> WeightsBody:
        """The sampling weights of checkpoint `step` (None: the latest scored)."""
        return self._get(WeightsBody, f"/v1/runs/{run_id}/weights", params=_step(step))

    def losses(
        self,
        run_id: str,
        *,
        step: int | None = None,
        max_results: int = 1000,
        page_token: str | None = None,
    ) -> LossPage:
        params = {**_step(step), **_page(max_results, page_token)}
        return self._get(LossPage, f"/v1/runs/{run_id}/losses", params=params)

    def all_losses(self, run_id: str, *, step: int | None = None) -> list[float | None]:
        """Every sample's loss at a checkpoint (None: the latest scored), by sample index."""
        first = self.losses(run_id, step=step, max_results=100_000)
        losses = list(first.losses)
        token = first.next_page_token
        while token is not None:
            page = self.losses(run_id, step=first.step, max_results=100_000, page_token=token)
            losses += page.losses
            token = page.next_page_token
        return losses

    def deltas(
        self,
        run_id: str,
        *,
        step: int | None = None,
        order: Literal["desc", "asc"] = "desc",
        max_results: int = 100,
        page_token: str | None = None,
    ) -> DeltaPage:
        params = {**_step(step), "order": order, **_page(max_results, page_token)}
        return self._get(DeltaPage, f"/v1/runs/{run_id}/deltas", params=params)

    def history(
        self,
        run_id: str,
        index: int,
        *,
        min_step: int | None = None,
        max_step: int | None = None,
    ) -> SampleHistory:
        """One sample's loss history, within min_step and max_step when given."""
        params = _steps(min_step, max_step)
        return self._get(SampleHistory, f"/v1/runs/{run_id}/samples/{index}/losses", params=params)

    def histories(
        self,
        run_id: str,
        indices: list[int],
        *,
        min_step: int | None = None,
        max_step: int | None = None,
    ) -> SampleHistories:
        """Several samples' histories: in the URL for a few, POSTed for many."""
        path = f"/v1/runs/{run_id}/losses/history"
        steps = _steps(min_step, max_step)
        if len(indices) <= MAX_GET_INDICES:
            params = {"indices": ",".join(map(str, indices)), **steps}
            return self._get(SampleHistories, path, params=params)
        response = self.http.post(path, json={"indices": indices, **steps})
        return _read(SampleHistories, response)

    def histories_frame(
        self,
        run_id: str,
        indices: list[int],
        *,
        min_step: int | None = None,
        max_step: int | None = None,
    ) -> pandas.DataFrame:
        """The histories as a pandas DataFrame, a row per sample and step: sample_index,
        step, update_index, loss, delta (pandas must be installed: pip install pandas)."""
        try:
            import pandas
        except ImportError as exc:
            raise ImportError(
                "histories_frame needs pandas: pip install pandas (or use histories())"
            ) from exc
        found = self.histories(run_id, indices, min_step=min_step, max_step=max_step)
        rows = [
            {"sample_index": sample.sample_index, **point.model_dump()}
            for sample in found.samples
            for point in sample.history
        ]
        columns = ["sample_index", "step", "update_index", "loss", "delta"]
        return pandas.DataFrame(rows, columns=columns)

    def sample(self, run_id: str, index: int) -> SampleText:
        """The sample's system prompt and turns as the run trains on them, and its row's other
        columns."""
        return self._get(SampleText, f"/v1/runs/{run_id}/samples/{index}")

    def plot_deltas(self, run_id: str, *, step: int | None = None, **params: Any) -> bytes:
        """The PNG of loss reduction by rank at a checkpoint."""
        response = self.http.get(
            f"/v1/runs/{run_id}/plots/deltas", params={**_step(step), **params}
        )
        _raise_for(response)
        return response.content

    def download(self, run_id: str, *, format: Literal["csv", "parquet"] = "csv") -> bytes:  # noqa: A002
        """The run's whole loss history as a CSV or Parquet file's bytes."""
        response = self.http.get(f"/v1/runs/{run_id}/losses/download", params={"format": format})
        _raise_for(response)
        return response.content

    def end_run(
        self,
        run_id: str,
        status: RunEnding,
        detail: str | None = None,
        *,
        run_token: str | None = None,
        timeout: float | None = None,
    ) -> RunInfo:
        """Report that the run finished or failed. run_token: the run's own token, which a
        scorer without a token asks for."""
        body = RunEnd(status=status, detail=None if detail is None else detail[:4000])
        path, payload = f"/v1/runs/{run_id}/end", body.model_dump()
        extra = _write_options(run_token, timeout)
        return _read(RunInfo, self.http.post(path, json=payload, **extra))

    def delete_run(self, run_id: str, *, run_token: str | None = None) -> DeletedRun:
        """Remove the run's history and checkpoint files. run_token: the run's own token,
        which a scorer without a token asks for."""
        response = self.http.delete(f"/v1/runs/{run_id}", headers=_run_token(run_token))
        return _read(DeletedRun, response)

    def log_metrics(
        self,
        run_id: str,
        points: Sequence[MetricPoint],
        *,
        run_token: str | None = None,
        timeout: float | None = None,
    ) -> MetricsStored:
        """Store logged values of the run (at most MAX_METRICS_BATCH a call). run_token: the
        run's own token, which a scorer without a token asks for."""
        body = MetricBatch(metrics=list(points)).model_dump()
        extra = _write_options(run_token, timeout)
        return _read(
            MetricsStored, self.http.post(f"/v1/runs/{run_id}/metrics", json=body, **extra)
        )

    def metrics(self, run_id: str) -> RunMetrics:
        """Each metric the run logged, at its latest step."""
        return self._get(RunMetrics, f"/v1/runs/{run_id}/metrics")

    def metric_history(
        self,
        run_id: str,
        key: str,
        *,
        min_step: int | None = None,
        max_step: int | None = None,
        max_results: int = 1000,
        page_token: str | None = None,
    ) -> MetricHistory:
        params = {"key": key, **_steps(min_step, max_step), **_page(max_results, page_token)}
        return self._get(MetricHistory, f"/v1/runs/{run_id}/metrics/history", params=params)

    def all_metric_history(
        self, run_id: str, key: str, *, min_step: int | None = None, max_step: int | None = None
    ) -> list[MetricValue]:
        """The metric's whole history (within the step range), page after page."""
        return list(
            _every(
                lambda token: self.metric_history(
                    run_id, key, min_step=min_step, max_step=max_step, max_results=10_000,
                    page_token=token,
                ),
                lambda page: page.history,
            )
        )  # fmt: skip

    def _get(self, model: type[Model], path: str, **kwargs: Any) -> Model:
        return _read(model, self.http.get(path, **kwargs))


def _run_token(run_token: str | None) -> dict[str, str]:
    return {} if run_token is None else {RUN_TOKEN_HEADER: run_token}


def _write_options(run_token: str | None, timeout: float | None) -> dict[str, Any]:
    """httpx options of a request that changes a run: its token, and a timeout if given."""
    return {"headers": _run_token(run_token)} | ({} if timeout is None else {"timeout": timeout})


def _step(step: int | None) -> dict[str, int]:
    return {} if step is None else {"step": step}


def _steps(min_step: int | None, max_step: int | None) -> dict[str, int]:
    bounds = {"min_step": min_step, "max_step": max_step}
    return {key: value for key, value in bounds.items() if value is not None}


def _page(max_results: int, page_token: str | None) -> dict[str, Any]:
    return {"max_results": max_results} | ({} if page_token is None else {"page_token": page_token})


Page = TypeVar("Page")
Item = TypeVar("Item")


def _every(
    get: Callable[[str | None], Page], items: Callable[[Page], list[Item]]
) -> Iterator[Item]:
    token: str | None = None
    while True:
        page = get(token)
        yield from items(page)
        token = page.next_page_token  # type: ignore[attr-defined]
        if token is None:
            return


def _read(model: type[Model], response: httpx.Response) -> Model:
    _raise_for(response)
    return model.model_validate(response.json())


def _raise_for(response: httpx.Response) -> None:
    """Nothing for a success; the ApiError the answer stands for otherwise."""
    status = response.status_code
    if status == 202:
        raise NotScoredYet(_pending(response), _seconds(response.headers.get("retry-after")))
    if 200 <= status < 300:
        return
    detail, code = _detail(response)
    raise ERRORS.get(status, ApiError)(status, detail, code)


def _pending(response: httpx.Response) -> Pending:
    """A 202's body; one that is not the scorer's (a proxy's) still reads as pending."""
    try:
        return Pending.model_validate(response.json())
    except ValueError:  # not JSON, or not a Pending (pydantic's ValidationError is one)
        return Pending(detail=_detail(response)[0], status="received")


def _detail(response: httpx.Response) -> tuple[str, str | None]:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200] or f"HTTP {response.status_code}", None
    if isinstance(body, dict):
        detail = body.get("detail") or body.get("status") or body
        code = body.get("code")
        return str(detail), code if isinstance(code, str) else None
    return str(body), None


def _seconds(value: str | None) -> float | None:
    try:
        return None if value is None else max(0.0, float(value))
    except ValueError:
        return None
