"""Steps and checkpoint sizes as 64-bit integers on PostgreSQL (its INTEGER is 32-bit: a
checkpoint over 2 GiB, or a step past 2^31, did not fit). SQLite's INTEGER is 64-bit already.

Revision ID: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

WIDENED = [
    ("runs", "initial_step"),
    ("checkpoints", "step"),
    ("checkpoints", "n_bytes"),
    ("losses", "step"),
    ("windows", "step"),
]


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        return
    for table, column in WIDENED:
        op.alter_column(table, column, type_=sa.BigInteger(), existing_type=sa.Integer())


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        return
    for table, column in WIDENED:
        op.alter_column(table, column, type_=sa.Integer(), existing_type=sa.BigInteger())
