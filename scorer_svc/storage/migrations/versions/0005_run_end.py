"""A run records how it ended, as its trainer reports it (finished or failed, when, and why),
so that the API can tell a finished run from one still training.

Revision ID: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("ended_at", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("end_status", sa.String(16), nullable=True))
        batch.add_column(sa.Column("end_detail", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("end_detail")
        batch.drop_column("end_status")
        batch.drop_column("ended_at")
