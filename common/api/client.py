"""A typed client of the scorer's REST API: one method per route, answers read into
common.api.schemas, and every answer that is not a success raised as an ApiError that keeps
the scorer's `detail`.

    with ScorerApi("http://127.0.0.1:8000", token=...) as api:
        for run in api.all_runs():
            print(run.run_id, run.status, run.last_step)
        weights = api.weights("my-run", step=40)  # NotScoredYet while it is being scored

The routes that change a run (its end, its deletion) need, on a scorer without a token, the
run's own token: `run_token=` (the run_token of the trainer's run.json).

Transport failures (no answer, a refused certificate) are httpx's own exceptions. Retrying is
the caller's business: the trainer retries under its policy (trainer_svc.scorer.weights).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from typing import Any, Literal, TypeVar

import httpx
from pydantic import BaseModel

from common.api.schemas import (
    CheckpointInfo,
    CheckpointPage,
    DeletedRun,
    DeltaPage,
    Health,
    LossPage,
    Pending,
    RunEnd,
    RunEnding,
    RunInfo,
    RunPage,
    SampleHistories,
    SampleHistory,
    WeightsBody,
)
from common.wire.errors import ProtocolError

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

    def runs(self, *, max_results: int = 100, page_token: str | None = None) -> RunPage:
        return self._get(RunPage, "/v1/runs", params=_page(max_results, page_token))

    def all_runs(self) -> Iterator[RunInfo]:
        return _every(lambda token: self.runs(page_token=token), lambda page: page.runs)

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

    def history(self, run_id: str, index: int) -> SampleHistory:
        return self._get(SampleHistory, f"/v1/runs/{run_id}/samples/{index}/losses")

    def histories(self, run_id: str, indices: list[int]) -> SampleHistories:
        """Several samples' histories: in the URL for a few, POSTed for many."""
        path = f"/v1/runs/{run_id}/losses/history"
        if len(indices) <= MAX_GET_INDICES:
            params = {"indices": ",".join(map(str, indices))}
            return self._get(SampleHistories, path, params=params)
        response = self.http.post(path, json={"indices": indices})
        return _read(SampleHistories, response)

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
        extra: dict[str, Any] = {"headers": _run_token(run_token)}
        if timeout is not None:
            extra["timeout"] = timeout
        return _read(RunInfo, self.http.post(path, json=payload, **extra))

    def delete_run(self, run_id: str, *, run_token: str | None = None) -> DeletedRun:
        """Remove the run's history and checkpoint files. run_token: the run's own token,
        which a scorer without a token asks for."""
        response = self.http.delete(f"/v1/runs/{run_id}", headers=_run_token(run_token))
        return _read(DeletedRun, response)

    def _get(self, model: type[Model], path: str, **kwargs: Any) -> Model:
        return _read(model, self.http.get(path, **kwargs))


def _run_token(run_token: str | None) -> dict[str, str]:
    return {} if run_token is None else {RUN_TOKEN_HEADER: run_token}


def _step(step: int | None) -> dict[str, int]:
    return {} if step is None else {"step": step}


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
