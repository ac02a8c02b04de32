"""The REST API's bodies: what the scorer answers and its clients read (not the tables)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel


class Health(BaseModel):
    status: str
    ranks: int = 1  # processes scoring (torchrun), rank 0 included
    ranks_alive: bool = True  # false once one stopped answering: restart the scorer
    instance: str | None = None  # this scorer's name in its database


class DeletedRun(BaseModel):
    run_id: str
    checkpoints: int
    losses: int
    files: int  # checkpoint files removed from the scorer's disk


class RunInfo(BaseModel):
    run_id: str
    instance: str | None  # the scorer that registered it, the only one that scores it
    base_model: str
    finetuning_type: str
    n_samples: int
    n_no_labels: int
    n_invalid: int | None = None  # samples with no loss at the initial checkpoint
    window_size: float
    update_times: int
    fingerprint: str
    initial_step: int | None
    created_at: datetime
    config: dict[str, Any]


class CheckpointInfo(BaseModel):
    step: int
    update_index: int
    kind: str
    status: str
    digest: str
    n_bytes: int
    received_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    score_seconds: float | None
    samples_per_second: float | None
    n_null: int | None
    error: str | None


class LossPage(BaseModel):
    run_id: str
    step: int
    offset: int
    limit: int
    n_samples: int
    losses: list[float | None]


class LossPoint(BaseModel):
    step: int
    update_index: int
    loss: float | None
    delta: float | None  # initial loss minus this loss


class SampleHistory(BaseModel):
    run_id: str
    sample_index: int
    history: list[LossPoint]


class WindowInfo(BaseModel):
    start: int
    end: int
    truncated_at: int | None


class WeightsBody(BaseModel):
    run_id: str
    step: int
    update_index: int
    t: int | None
    T: int | None
    u: float | None
    window: WindowInfo | None
    n_samples: int
    n_ranked: int
    # the mean loss reduction (initial - current) of the ranked samples inside the window and
    # outside it; null without a window, or for a side with no sample
    delta_mean_in_window: float | None = None
    delta_mean_outside: float | None = None
    weights: list[float]


class ScoringProgressBody(BaseModel):
    scored: int  # samples scored so far
    total: int  # the run's N
    seconds: float  # since scoring this checkpoint began
    eta_seconds: float | None  # at the rate so far; None before the first batch is done


class Pending(BaseModel):
    detail: str
    status: str
    progress: ScoringProgressBody | None = None  # while the checkpoint is being scored


class RankedSample(BaseModel):
    rank: int  # 0: the largest loss reduction
    sample_index: int
    delta: float  # initial loss - current loss
    loss: float  # at this checkpoint
    initial_loss: float  # at the run's first checkpoint
    in_window: bool  # the window of this checkpoint's weights took it


class DeltaPage(BaseModel):
    run_id: str
    step: int
    update_index: int
    window: WindowInfo | None  # null for the run's first checkpoint
    n_ranked: int  # samples with a finite loss reduction
    items: list[RankedSample]
    next_page_token: str | None  # pass as page_token for the next page; null on the last
