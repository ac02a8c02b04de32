"""Each run names the scorer instance that registered it, so that several scorers can share
one database: a scorer scores, fails and deletes only its own runs' checkpoints. Runs made
before have none; the first scorer to start on the database takes them
(`scorer_svc.storage.runs.adopt_unowned_runs`).

Revision ID: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("instance", sa.String(64), nullable=True))
    op.create_index("ix_runs_instance", "runs", ["instance"])


def downgrade() -> None:
    op.drop_index("ix_runs_instance", table_name="runs")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("instance")
