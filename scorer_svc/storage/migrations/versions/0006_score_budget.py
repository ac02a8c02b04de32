"""A scoring budget: a checkpoint records how many samples it measured and the mean age of
the other estimates, and the estimates that ranked its samples are kept.

Revision ID: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("checkpoints") as batch:
        batch.add_column(sa.Column("n_measured", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("mean_age", sa.Float(), nullable=True))
    op.create_table(
        "estimates",
        sa.Column("run_pk", sa.Integer(), sa.ForeignKey("runs.id"), primary_key=True),
        sa.Column(
            "step",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
        ),
        sa.Column("delta", sa.LargeBinary(), nullable=False),
        sa.Column("age", sa.LargeBinary(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("estimates")
    with op.batch_alter_table("checkpoints") as batch:
        batch.drop_column("mean_age")
        batch.drop_column("n_measured")
