"""On PostgreSQL the losses no longer check their run through a foreign key: the check runs
once per row, and took about 0.85 s of the 1.3 s a checkpoint's 200,000 losses took to write.
Nothing is lost by it: losses are written only for a checkpoint of a run that exists (a run
cannot be deleted while a checkpoint of it is queued or being scored), and deleting a run
deletes its losses first (scorer_svc/storage/retention.py). SQLite keeps the key, which costs it
little.

Revision ID: 0004
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

NAME = "losses_run_pk_fkey"  # the name PostgreSQL gave the key of 0001


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE losses DROP CONSTRAINT IF EXISTS {NAME}")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.create_foreign_key(NAME, "losses", "runs", ["run_pk"], ["id"])
