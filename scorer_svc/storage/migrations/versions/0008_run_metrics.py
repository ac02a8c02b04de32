"""A run's logged metrics (its trainer's loss, eval loss, learning rate and selection
figures), by key and step.

Revision ID: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "metrics",
        sa.Column("run_pk", sa.Integer(), sa.ForeignKey("runs.id"), primary_key=True),
        sa.Column("key", sa.String(250), primary_key=True),
        sa.Column(
            "step",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
        ),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("logged_at", sa.DateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("metrics")
