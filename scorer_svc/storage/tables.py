"""Tables: runs, their checkpoints, every sample's loss per checkpoint, and window data."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

RECEIVED, SCORING, SCORED, FAILED = "received", "scoring", "scored", "failed"
# an async run's checkpoint that a newer one replaced while it waited: never scored, its
# tensors removed (the trainer draws from the newest weights only)
SUPERSEDED = "superseded"
STATUSES = (RECEIVED, SCORING, SCORED, FAILED, SUPERSEDED)
# How a run ended, as its trainer reported it (POST /v1/runs/{run_id}/end)
FINISHED = "finished"
ENDINGS = (FINISHED, FAILED)

# Steps and byte counts reach past 2^31: 64-bit (SQLite's INTEGER is already). Schema changes
# come with a migration in scorer_svc/storage/migrations.
Wide = BigInteger().with_variant(Integer(), "sqlite")
PENDING = (RECEIVED, SCORING)


def now() -> datetime:
    """The time as the DateTime columns store it: UTC, without a time zone."""
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(String(128), unique=True)
    # the scorer that registered the run: its checkpoints live on that scorer's disk, and only
    # that scorer scores, fails or deletes them (several scorers may share one database)
    instance: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    base_model: Mapped[str] = mapped_column(Text)
    finetuning_type: Mapped[str] = mapped_column(String(16))
    config: Mapped[dict] = mapped_column(JSON)  # the hello that registered the run
    # what people call the run (its trainer's run_name; a resume may change it); tags: RunTag
    run_name: Mapped[str | None] = mapped_column(String(256), nullable=True, index=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    n_samples: Mapped[int] = mapped_column(Integer)
    n_no_labels: Mapped[int] = mapped_column(Integer)
    window_size: Mapped[float] = mapped_column(Float)
    update_times: Mapped[int] = mapped_column(Integer)
    initial_step: Mapped[int | None] = mapped_column(Wide, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    # set when the trainer reports the run's end; cleared when the run is resumed
    ended_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    end_status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    end_detail: Mapped[str | None] = mapped_column(Text, nullable=True)

    @property
    def is_async(self) -> bool:
        """Whether its trainer draws from the newest weights (selection_mode async)."""
        return self.config.get("selection_mode") == "async"

    @property
    def score_budget(self) -> float:
        return float(self.config.get("score_budget", 1.0))

    def has_window(self, step: int) -> bool:
        """Whether the checkpoint at `step` is weighted through a window: every one but the
        run's first, whose losses are the initial ones (update 1 of a later epoch too)."""
        return self.initial_step is not None and step != self.initial_step


class CheckpointRow(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (
        UniqueConstraint("run_pk", "step"),
        Index("ix_checkpoints_status", "status", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_pk: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    step: Mapped[int] = mapped_column(Wide)
    update_index: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    # the payload's digest as common.wire.protocol.payload_digest gives it ("xxh3-128:<hex>");
    # the column keeps its first name, so databases made before stay readable
    digest: Mapped[str] = mapped_column("sha256", String(64))
    path: Mapped[str] = mapped_column(Text)
    n_bytes: Mapped[int] = mapped_column(Wide)
    status: Mapped[str] = mapped_column(String(16))
    received_at: Mapped[datetime] = mapped_column(DateTime)
    started_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    score_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    samples_per_second: Mapped[float | None] = mapped_column(Float, nullable=True)
    n_null: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # under a scoring budget: the samples measured at this checkpoint, and the mean age (in
    # scored checkpoints) of the ranked others' estimates; NULL when every sample was measured
    n_measured: Mapped[int | None] = mapped_column(Integer, nullable=True)
    mean_age: Mapped[float | None] = mapped_column(Float, nullable=True)


class Loss(Base):
    """One sample's loss at one checkpoint; NULL when the loss does not exist or is not finite.

    The primary key serves "all losses at a step"; the index serves "one sample across steps".
    On PostgreSQL run_pk's foreign key is not enforced (migration 0004: its check per row was
    most of a checkpoint's write); SQLite enforces it.
    """

    __tablename__ = "losses"
    __table_args__ = (
        Index("ix_losses_sample", "run_pk", "sample_index", "step"),
        {"sqlite_with_rowid": False},
    )

    run_pk: Mapped[int] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    step: Mapped[int] = mapped_column(Wide, primary_key=True)
    sample_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    loss: Mapped[float | None] = mapped_column(Float, nullable=True)


class WindowRow(Base):
    """Where the window sat at an update: with the losses, rebuilds the weights."""

    __tablename__ = "windows"

    run_pk: Mapped[int] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    step: Mapped[int] = mapped_column(Wide, primary_key=True)
    update_index: Mapped[int] = mapped_column(Integer)
    t: Mapped[int] = mapped_column(Integer)
    T: Mapped[int] = mapped_column("t_max", Integer)  # SQLite names ignore case
    u: Mapped[float] = mapped_column(Float)
    start: Mapped[int] = mapped_column(Integer)
    end: Mapped[int] = mapped_column(Integer)
    truncated_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    n_ranked: Mapped[int] = mapped_column(Integer)


class EstimateRow(Base):
    """Under a scoring budget, what ranked a checkpoint's samples (common.budget.Estimates):
    every sample's loss reduction, measured there or estimated (float64, NaN: not ranked), and
    its age in scored checkpoints (int32, 0: measured there), as little-endian arrays. With
    the window, rebuilds the weights; the next checkpoint's estimates start from them."""

    __tablename__ = "estimates"

    run_pk: Mapped[int] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    step: Mapped[int] = mapped_column(Wide, primary_key=True)
    delta: Mapped[bytes] = mapped_column(LargeBinary)
    age: Mapped[bytes] = mapped_column(LargeBinary)


class RunTag(Base):
    """A run's tags (its trainer's `tags`, MLflow's run tags): one row per key, so that runs
    can be searched by tag in SQL on every backend."""

    __tablename__ = "run_tags"

    run_pk: Mapped[int] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    key: Mapped[str] = mapped_column(String(250), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    __table_args__ = (Index("ix_run_tags_key", "key"),)


class MetricRow(Base):
    """What the run's trainer logged (loss, eval loss, learning rate, the selection's figures),
    as MLflow keeps a run's metrics: one value per key and step, the last sent standing (a
    resumed run logs its steps after the checkpoint again)."""

    __tablename__ = "metrics"

    run_pk: Mapped[int] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    key: Mapped[str] = mapped_column(String(250), primary_key=True)
    step: Mapped[int] = mapped_column(Wide, primary_key=True)
    value: Mapped[float] = mapped_column(Float)
    logged_at: Mapped[datetime] = mapped_column(DateTime)
