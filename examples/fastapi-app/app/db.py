"""The database, as entrykit left it: reachable, and migrated to head by `entrykit migrate`.

The URL is entrykit's (ENTRYKIT_DATABASE_URL, else DATABASE_URL). In the compose stack and the
Kubernetes example it carries no password: entrykit loads the secret file into PGPASSWORD
(ENTRYKIT_SECRETS=PGPASSWORD=postgres_password), which libpq reads, so the password is never
in a URL, an environment listing or a log line.
"""

from __future__ import annotations

import os
import re
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

# The table the example's Alembic migrations create (examples/fastapi-app/migrations/).
TABLE = "notes"


def database_url() -> str | None:
    """The configured URL with any SQLAlchemy driver suffix removed (psycopg wants plain)."""
    url = os.environ.get("ENTRYKIT_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if not url:
        return None
    return re.sub(r"^postgres(?:ql)?(?:\+\w+)?://", "postgresql://", url)


def connect() -> psycopg.Connection[dict[str, Any]]:
    """A new connection; raises LookupError when no database is configured."""
    url = database_url()
    if url is None:
        raise LookupError("no database configured: set DATABASE_URL")
    return psycopg.connect(url, connect_timeout=5, row_factory=dict_row)


def read_rows(limit: int = 100) -> list[dict[str, Any]]:
    """Rows of the migrated table, oldest first."""
    query = sql.SQL("SELECT * FROM {} ORDER BY 1 LIMIT %s").format(sql.Identifier(TABLE))
    with connect() as conn:
        return conn.execute(query, (limit,)).fetchall()


def schema_revision() -> str | None:
    """The Alembic revision the database is at (None before the first migration)."""
    with connect() as conn:
        found = conn.execute("SELECT to_regclass('alembic_version') AS t").fetchone()
        if found is None or found["t"] is None:
            return None
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        return None if row is None else str(row["version_num"])
