"""The REST API's bodies: what the scorer answers and its clients read (not the tables).

Every field is described here once: the OpenAPI document and its /docs page show these words.
Timestamps are UTC and carry their zone ("...Z").
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from common.validation import Key


def _utc(value: datetime) -> datetime:
    """The tables keep naive UTC times: given their zone here."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_utc)]

RunStatus = Literal["registered", "training", "finished", "failed"]
# How GET /v1/runs orders the runs: as they registered, or by their latest checkpoint's step
RunOrder = Literal[
    "created", "created ASC", "created DESC", "last_step", "last_step ASC", "last_step DESC"
]
RunEnding = Literal["finished", "failed"]
CheckpointStatus = Literal["received", "scoring", "scored", "failed", "superseded"]
FinetuningType = Literal["lora", "full"]

PAGE_TOKEN = "pass as page_token to get the next page; null on the last page"


class ErrorBody(BaseModel):
    """Every answer that is not a success: what was wrong and what to do."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"detail": "no run 'run-x'; GET /v1/runs lists the runs"}]}
    )
    detail: str = Field(description="what was wrong, and what to do about it")
    code: str | None = Field(
        None, description="a stable name for the error where a client acts on it (unknown_run)"
    )


class Health(BaseModel):
    status: str = Field(description="ok; otherwise what is wrong (worker stopped, rank lost)")
    ranks: int = Field(1, description="processes scoring (torchrun), rank 0 included")
    ranks_alive: bool = Field(
        True, description="false once a rank stopped answering: restart the scorer"
    )
    instance: str | None = Field(None, description="this scorer's name in its database")
    detail: str | None = Field(None, description="what to do when the scorer is not healthy")


class DeletedRun(BaseModel):
    run_id: str = Field(description="the run removed")
    checkpoints: int = Field(description="checkpoint rows removed")
    losses: int = Field(description="loss rows removed")
    files: int = Field(description="checkpoint files removed from the scorer's disk")


class RunInfo(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "run_id": "demo",
                    "run_name": "qwen-7b alpaca, window 0.2",
                    "tags": {"team": "nlp", "dataset": "alpaca"},
                    "instance": "scorer-1",
                    "status": "training",
                    "base_model": "/models/Qwen2.5-7B",
                    "finetuning_type": "lora",
                    "n_samples": 999,
                    "n_no_labels": 0,
                    "n_invalid": 0,
                    "window_size": 0.2,
                    "update_times": 4,
                    "fingerprint": "0" * 64,
                    "initial_step": 0,
                    "n_checkpoints": 3,
                    "last_step": 40,
                    "last_scored_step": 40,
                    "created_at": "2026-11-29T16:07:13.123456Z",
                    "ended_at": None,
                    "end_detail": None,
                    "config": {"run_id": "demo", "dataset": "alpaca_en_demo"},
                }
            ]
        }
    )
    run_id: str = Field(description="the run's id, chosen by its trainer")
    run_name: str | None = Field(
        None, description="what people call the run: its trainer's run_name (null: none given)"
    )
    tags: dict[str, str] = Field(
        default_factory=dict, description="the run's tags: its trainer's tags, key to value"
    )
    instance: str | None = Field(
        description="the scorer that registered it, the only one that scores it"
    )
    status: RunStatus = Field(
        description="registered: no checkpoint yet; training: checkpoints arrive; finished or "
        "failed: as its trainer reported the end (a resume makes it training again)"
    )
    base_model: str = Field(description="the base model's path or hub id, as the trainer named it")
    finetuning_type: FinetuningType = Field(description="lora: an adapter; full: every weight")
    n_samples: int = Field(description="N, the training samples scored at every checkpoint")
    n_no_labels: int = Field(description="samples with no label token: never weighted")
    n_invalid: int | None = Field(
        None, description="samples with no loss at the initial checkpoint (null before it)"
    )
    window_size: float = Field(description="the window's width as a fraction of N")
    update_times: int = Field(description="selection updates per epoch")
    fingerprint: str = Field(description="sha256 of the tokenized samples the run scores")
    initial_step: int | None = Field(
        description="the step whose losses are the initial ones (null before it is received)"
    )
    n_checkpoints: int = Field(0, description="checkpoints received, whatever their status")
    last_step: int | None = Field(None, description="the latest checkpoint received")
    last_scored_step: int | None = Field(None, description="the latest checkpoint scored")
    created_at: UtcDatetime = Field(description="when the run was registered (UTC)")
    ended_at: UtcDatetime | None = Field(
        None, description="when the trainer reported the end (UTC); null while it runs"
    )
    end_detail: str | None = Field(None, description="what the trainer said of the end")
    config: dict[str, Any] = Field(
        description="the hello that registered the run (without the training run's token)"
    )


class RunPage(BaseModel):
    runs: list[RunInfo] = Field(description="the runs found, in the order asked for")
    next_page_token: str | None = Field(description=PAGE_TOKEN)


class RunEnd(BaseModel):
    """How a run ended, as its trainer reports it."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"status": "finished", "detail": "trained 120 steps"}]},
    )
    status: RunEnding = Field(description="finished, or failed")
    detail: str | None = Field(
        None, max_length=4000, description="a line on the end: the error when it failed"
    )


# Under a scoring budget: how much of a checkpoint's ranking was measured there.
MeasuredCount = Annotated[
    int | None,
    Field(
        description="samples whose loss was measured at this checkpoint under a scoring budget "
        "(the others are ranked on estimates); null when every sample was"
    ),
]
MeanAge = Annotated[
    float | None,
    Field(
        description="the mean age, in scored checkpoints, of the estimates of the ranked "
        "samples not measured here; null when every sample was"
    ),
]


class CheckpointInfo(BaseModel):
    step: int = Field(description="the global step the checkpoint was taken at")
    update_index: int = Field(description="the selection update it serves, 1-based per epoch")
    kind: FinetuningType = Field(description="lora: adapter tensors; full: every weight")
    status: CheckpointStatus = Field(
        description="received (queued), scoring, scored, failed (see error), or superseded "
        "(an async run's checkpoint that a newer one replaced while it waited: never scored)"
    )
    digest: str = Field(description="the payload's digest (xxh3-128)")
    n_bytes: int = Field(description="the payload's size")
    received_at: UtcDatetime = Field(description="when it was received (UTC)")
    started_at: UtcDatetime | None = Field(description="when scoring began (UTC)")
    finished_at: UtcDatetime | None = Field(description="when scoring ended (UTC)")
    score_seconds: float | None = Field(description="seconds scoring took")
    samples_per_second: float | None = Field(description="samples scored per second")
    n_null: int | None = Field(description="samples with no finite loss at this checkpoint")
    error: str | None = Field(description="why scoring failed")
    n_measured: MeasuredCount = None
    mean_age: MeanAge = None


class CheckpointPage(BaseModel):
    checkpoints: list[CheckpointInfo] = Field(description="checkpoints by step")
    next_page_token: str | None = Field(description=PAGE_TOKEN)


class LossPage(BaseModel):
    run_id: str = Field(description="the run")
    step: int = Field(description="the checkpoint's step")
    n_samples: int = Field(description="N: sample indices run from 0 to N - 1")
    first_index: int = Field(description="the sample index of losses[0]")
    losses: list[float | None] = Field(
        description="the losses of samples first_index, first_index + 1, ...; null where a "
        "sample has no finite loss or, under a scoring budget, was not measured at this step"
    )
    next_page_token: str | None = Field(description=PAGE_TOKEN)


class LossPoint(BaseModel):
    step: int = Field(description="the checkpoint's step")
    update_index: int = Field(description="the selection update the checkpoint serves")
    loss: float | None = Field(description="the sample's loss there; null when not finite")
    delta: float | None = Field(description="the initial loss minus this loss")


class SampleHistory(BaseModel):
    run_id: str = Field(description="the run")
    sample_index: int = Field(description="the sample")
    history: list[LossPoint] = Field(description="its loss at every scored checkpoint, by step")


class HistoryRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"indices": [0, 7, 42]}]}
    )
    indices: list[Annotated[int, Field(ge=0, le=2**31 - 1)]] = Field(
        min_length=1, max_length=10_000, description="sample indices, at most 10,000"
    )
    min_step: int | None = Field(None, ge=0, description="the first step kept; null: the first")
    max_step: int | None = Field(None, ge=0, description="the last step kept; null: the last")


class SampleHistories(BaseModel):
    run_id: str = Field(description="the run")
    samples: list[SampleHistory] = Field(description="each sample asked for, in index order")


class WindowInfo(BaseModel):
    start: int = Field(description="the window's first rank (0: the largest loss reduction)")
    end: int = Field(description="the rank after the window's last")
    truncated_at: int | None = Field(
        description="the rank where loss reductions turn negative, when it cut the window"
    )


class WeightsBody(BaseModel):
    run_id: str = Field(description="the run")
    step: int = Field(description="the checkpoint the weights come from")
    update_index: int = Field(description="the selection update")
    t: int | None = Field(description="the schedule's position t (null for uniform weights)")
    T: int | None = Field(description="the schedule's length T")
    u: float | None = Field(description="the window's start as a fraction of N")
    window: WindowInfo | None = Field(description="null for the run's first checkpoint")
    n_samples: int = Field(description="N")
    n_ranked: int = Field(description="samples with a finite loss reduction")
    delta_mean_in_window: float | None = Field(
        None, description="mean loss reduction of the ranked samples in the window"
    )
    delta_mean_outside: float | None = Field(
        None, description="mean loss reduction of the ranked samples outside it"
    )
    n_measured: MeasuredCount = None
    mean_age: MeanAge = None
    weights: list[float] = Field(description="one sampling weight per sample; they sum to 1")


class ScoringProgressBody(BaseModel):
    scored: int = Field(description="samples scored so far")
    total: int = Field(description="the run's N")
    seconds: float = Field(description="since scoring this checkpoint began")
    eta_seconds: float | None = Field(
        description="seconds left at the rate so far; null before the first batch is done"
    )


class Pending(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "detail": "step 40 is scoring: 512 of 999 samples, 3 s left; retry shortly",
                    "status": "scoring",
                    "progress": {"scored": 512, "total": 999, "seconds": 3.1, "eta_seconds": 3.0},
                }
            ]
        }
    )
    detail: str = Field(description="what is pending")
    status: Literal["received", "scoring"] = Field(description="queued, or being scored")
    progress: ScoringProgressBody | None = Field(
        None, description="while the checkpoint is being scored"
    )


class RankedSample(BaseModel):
    rank: int = Field(description="0: the largest loss reduction")
    sample_index: int = Field(description="the sample")
    delta: float = Field(
        description="initial loss - current loss (under a scoring budget, estimated for a "
        "sample not measured here)"
    )
    loss: float | None = Field(
        description="the loss at this checkpoint; null for a sample not measured here"
    )
    initial_loss: float = Field(description="the loss at the run's first checkpoint")
    in_window: bool = Field(description="the window of this checkpoint's weights took it")
    age: int = Field(
        0,
        description="scored checkpoints since the sample was measured (0: measured here; "
        "above 0 only under a scoring budget)",
    )


class DeltaPage(BaseModel):
    run_id: str = Field(description="the run")
    step: int = Field(description="the checkpoint")
    update_index: int = Field(description="the selection update")
    window: WindowInfo | None = Field(description="null for the run's first checkpoint")
    n_ranked: int = Field(description="samples with a finite loss reduction")
    n_measured: MeasuredCount = None
    mean_age: MeanAge = None
    items: list[RankedSample] = Field(description="ranked samples, in the order asked for")
    next_page_token: str | None = Field(description=PAGE_TOKEN)


class Turn(BaseModel):
    user: str = Field(description="what the user says in this turn (context, not trained on)")
    assistant: str = Field(description="the reply trained on")


class SampleText(BaseModel):
    run_id: str = Field(description="the run")
    sample_index: int = Field(description="the sample's index among the run's N")
    system: str | None = Field(description="the system prompt; null when the sample has none")
    turns: list[Turn] = Field(
        description="the conversation, in order; the last reply is the response"
    )
    fields: dict[str, str | int | float | bool | None] = Field(
        description="the dataset row's other scalar columns (a group, a source...); text "
        "values shortened to 200 characters"
    )


# --- a run's logged metrics, as MLflow serves a run's metrics ---------------------------------

MAX_METRICS_BATCH = 1000  # points in one POST
MetricKey = Key  # as a tag key


class MetricPoint(BaseModel):
    """One logged value: its key, the optimizer step it was logged at, the value."""

    model_config = ConfigDict(extra="forbid")
    key: MetricKey = Field(description="the metric: loss, eval_loss, learning_rate, selection/...")
    step: int = Field(ge=0, le=2**62, description="the optimizer step it was logged at")
    value: float = Field(allow_inf_nan=False, description="its value (finite)")


class MetricBatch(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"metrics": [{"key": "loss", "step": 10, "value": 1.25}]}]},
    )
    metrics: list[MetricPoint] = Field(
        min_length=1,
        max_length=MAX_METRICS_BATCH,
        description=f"the points, at most {MAX_METRICS_BATCH}; a key and step sent again "
        "replaces the value stored",
    )


class MetricsStored(BaseModel):
    run_id: str = Field(description="the run")
    stored: int = Field(description="the points stored (a key and step sent twice counts once)")


class MetricValue(BaseModel):
    step: int = Field(description="the optimizer step")
    value: float = Field(description="the value logged")
    logged_at: UtcDatetime = Field(description="when the scorer stored it (UTC)")


class LatestMetric(MetricValue):
    key: str = Field(description="the metric")


class RunMetrics(BaseModel):
    run_id: str = Field(description="the run")
    metrics: list[LatestMetric] = Field(description="each metric's value at its latest step")


class MetricHistory(BaseModel):
    run_id: str = Field(description="the run")
    key: str = Field(description="the metric")
    history: list[MetricValue] = Field(description="its values by step")
    next_page_token: str | None = Field(description=PAGE_TOKEN)
