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

# The tables the example's Alembic migrations create (examples/fastapi-app/migrations/):
# notes, and jobs (one per note, state 'queued' until the worker has done it).
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


def add_note(body: str) -> dict[str, Any]:
    """Store a note and queue a job for the worker; returns the note."""
    with connect() as conn:
        note = conn.execute(
            "INSERT INTO notes (body) VALUES (%s) RETURNING id, body, created_at", (body,)
        ).fetchone()
        assert note is not None
        conn.execute("INSERT INTO jobs (note_id) VALUES (%s)", (note["id"],))
        return note


def take_job() -> dict[str, Any] | None:
    """Claim and finish the oldest queued job, or None when there is none.

    FOR UPDATE SKIP LOCKED lets several workers share the queue without taking a job twice.
    """
    with connect() as conn:
        return conn.execute(
            "UPDATE jobs SET state = 'done' WHERE id = ("
            " SELECT id FROM jobs WHERE state = 'queued' ORDER BY created_at, id"
            " LIMIT 1 FOR UPDATE SKIP LOCKED"
            ") RETURNING id, note_id"
        ).fetchone()


def job_counts() -> dict[str, int]:
    """How many jobs are in each state."""
    with connect() as conn:
        rows = conn.execute("SELECT state, count(*) AS n FROM jobs GROUP BY state").fetchall()
        return {row["state"]: int(row["n"]) for row in rows}


def schema_revision() -> str | None:
    """The Alembic revision the database is at (None before the first migration)."""
    with connect() as conn:
        found = conn.execute("SELECT to_regclass('alembic_version') AS t").fetchone()
        if found is None or found["t"] is None:
            return None
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        return None if row is None else str(row["version_num"])
