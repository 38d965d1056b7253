"""index the queued jobs, without locking the table

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 06:10:00

CREATE INDEX CONCURRENTLY cannot run inside a transaction: autocommit_block() steps out of
Alembic's. This is also why entrykit's replica lock is a polled pg_try_advisory_lock on a
connection of its own: a blocking lock would deadlock with CONCURRENTLY, which waits for every
transaction that started before it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        with op.get_context().autocommit_block():
            op.create_index(
                "jobs_queued",
                "jobs",
                ["created_at"],
                postgresql_where=sa.text("state = 'queued'"),
                postgresql_concurrently=True,
                if_not_exists=True,
            )
    else:
        op.create_index("jobs_queued", "jobs", ["created_at"])


def downgrade() -> None:
    op.drop_index("jobs_queued", table_name="jobs")
