"""Runs have a name and tags (their trainer's run_name and tags), searchable in SQL.

Revision ID: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("run_name", sa.String(256), nullable=True))
        batch.create_index("ix_runs_run_name", ["run_name"])
    op.create_table(
        "run_tags",
        sa.Column("run_pk", sa.Integer(), sa.ForeignKey("runs.id"), primary_key=True),
        sa.Column("key", sa.String(250), primary_key=True),
        sa.Column("value", sa.Text(), nullable=False),
    )
    op.create_index("ix_run_tags_key", "run_tags", ["key"])


def downgrade() -> None:
    op.drop_index("ix_run_tags_key", table_name="run_tags")
    op.drop_table("run_tags")
    with op.batch_alter_table("runs") as batch:
        batch.drop_index("ix_runs_run_name")
        batch.drop_column("run_name")
