"""create users

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 23:30:00

The users the app's initial data starts with (app/initial_data.py creates the first
superuser). The e-mail's unique index has the FastAPI template's name, ``ix_user_email``: two
replicas inserting the same first user at once is the template's ``UniqueViolation``.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(),
            primary_key=True,
        ),
        # MySQL indexes only sized strings; 255 characters of utf8mb4 fit InnoDB's index limit
        sa.Column("email", sa.String(255), nullable=False),
        sa.Column("hashed_password", sa.String(255), nullable=False),
        sa.Column("is_superuser", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
    )
    op.create_index("ix_user_email", "users", ["email"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_user_email", table_name="users")
    op.drop_table("users")
