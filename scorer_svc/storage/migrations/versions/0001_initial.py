"""The schema as the releases before migrations made it (create_all of their models).

Revision ID: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("run_id", sa.String(128), nullable=False, unique=True),
        sa.Column("base_model", sa.Text(), nullable=False),
        sa.Column("finetuning_type", sa.String(16), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("n_samples", sa.Integer(), nullable=False),
        sa.Column("n_no_labels", sa.Integer(), nullable=False),
        sa.Column("window_size", sa.Float(), nullable=False),
        sa.Column("update_times", sa.Integer(), nullable=False),
        sa.Column("initial_step", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "checkpoints",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("run_pk", sa.Integer(), sa.ForeignKey("runs.id"), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("update_index", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("n_bytes", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("score_seconds", sa.Float(), nullable=True),
        sa.Column("samples_per_second", sa.Float(), nullable=True),
        sa.Column("n_null", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.UniqueConstraint("run_pk", "step"),
    )
    op.create_index("ix_checkpoints_status", "checkpoints", ["status", "id"])
    op.create_table(
        "losses",
        sa.Column("run_pk", sa.Integer(), sa.ForeignKey("runs.id"), primary_key=True),
        sa.Column("step", sa.Integer(), primary_key=True),
        sa.Column("sample_index", sa.Integer(), primary_key=True),
        sa.Column("loss", sa.Float(), nullable=True),
        sqlite_with_rowid=False,
    )
    op.create_index("ix_losses_sample", "losses", ["run_pk", "sample_index", "step"])
    op.create_table(
        "windows",
        sa.Column("run_pk", sa.Integer(), sa.ForeignKey("runs.id"), primary_key=True),
        sa.Column("step", sa.Integer(), primary_key=True),
        sa.Column("update_index", sa.Integer(), nullable=False),
        sa.Column("t", sa.Integer(), nullable=False),
        sa.Column("t_max", sa.Integer(), nullable=False),
        sa.Column("u", sa.Float(), nullable=False),
        sa.Column("start", sa.Integer(), nullable=False),
        sa.Column("end", sa.Integer(), nullable=False),
        sa.Column("truncated_at", sa.Integer(), nullable=True),
        sa.Column("n_ranked", sa.Integer(), nullable=False),
    )


def downgrade() -> None:
    for table in ("windows", "losses", "checkpoints", "runs"):
        op.drop_table(table)
