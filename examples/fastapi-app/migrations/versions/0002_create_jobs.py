"""create the jobs table the worker takes work from

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 06:05:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), sa.Identity(), primary_key=True),
        sa.Column("note_id", sa.BigInteger, sa.ForeignKey("notes.id", ondelete="CASCADE")),
        sa.Column("state", sa.String(16), nullable=False, server_default="queued"),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
    )


def downgrade() -> None:
    op.drop_table("jobs")
