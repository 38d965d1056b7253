"""The database, as entrykit left it: reachable, and migrated to head.

The URL is entrykit's (ENTRYKIT_DATABASE_URL, else DATABASE_URL): PostgreSQL through psycopg,
or ``sqlite:///PATH`` for a quick local try. In the compose stack and the Kubernetes example
the PostgreSQL URL carries no password: entrykit loads the secret file into PGPASSWORD
(ENTRYKIT_SECRETS=PGPASSWORD=postgres_password), which libpq reads, so the password is never in
a URL, an environment listing or a log line.

The tables come from the Alembic migrations in ../migrations: ``notes``, ``jobs`` (one per
note, ``queued`` until the worker has done it), and ``users`` (the first superuser, created by
app/initial_data.py).
"""

from __future__ import annotations

import os
import re
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

TABLE = "notes"

_CLAIM_POSTGRES = (
    "UPDATE jobs SET state = 'done' WHERE id = ("
    " SELECT id FROM jobs WHERE state = 'queued' ORDER BY created_at, id"
    " LIMIT 1 FOR UPDATE SKIP LOCKED"  # several workers share the queue, none takes a job twice
    ") RETURNING id, note_id"
)
_CLAIM_SQLITE = (  # SQLite has one writer at a time: no row locks needed
    "UPDATE jobs SET state = 'done' WHERE id = ("
    " SELECT id FROM jobs WHERE state = 'queued' ORDER BY created_at, id LIMIT 1"
    ") RETURNING id, note_id"
)


def database_url() -> str | None:
    """The configured URL, without a SQLAlchemy driver suffix (psycopg wants it plain)."""
    url = os.environ.get("ENTRYKIT_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if not url:
        return None
    return re.sub(r"^postgres(?:ql)?(?:\+\w+)?://", "postgresql://", url)


class _Connection:
    """The few calls the app needs, over psycopg or sqlite3, rows as dicts, %s placeholders."""

    def __init__(self, url: str) -> None:
        self.sqlite = url.startswith("sqlite:")
        if self.sqlite:
            self._conn: Any = sqlite3.connect(url.removeprefix("sqlite:///"), timeout=5)
            self._conn.row_factory = lambda cursor, row: {
                column[0]: value for column, value in zip(cursor.description, row, strict=True)
            }
        else:
            import psycopg
            from psycopg.rows import dict_row

            self._conn = psycopg.connect(url, connect_timeout=5, row_factory=dict_row)

    def run(self, query: str, params: Sequence[Any] = ()) -> Any:
        if self.sqlite:
            query = query.replace("%s", "?")
        return self._conn.execute(query, params)

    def all(self, query: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return list(self.run(query, params).fetchall())

    def one(self, query: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        rows = self.all(query, params)
        return rows[0] if rows else None

    def commit(self) -> None:
        self._conn.commit()

    def close(self) -> None:
        self._conn.close()


@contextmanager
def connect() -> Iterator[_Connection]:
    """A connection, committed and closed at the end; LookupError when none is configured."""
    url = database_url()
    if url is None:
        raise LookupError("no database configured: set DATABASE_URL")
    conn = _Connection(url)
    try:
        yield conn
        conn.commit()
    finally:
        conn.close()


def read_rows(limit: int = 100) -> list[dict[str, Any]]:
    """Notes, oldest first."""
    with connect() as conn:
        return conn.all("SELECT id, body, created_at FROM notes ORDER BY id LIMIT %s", (limit,))


def add_note(body: str) -> dict[str, Any]:
    """Store a note and queue a job for the worker; returns the note."""
    with connect() as conn:
        note = conn.one(
            "INSERT INTO notes (body) VALUES (%s) RETURNING id, body, created_at", (body,)
        )
        assert note is not None
        conn.run("INSERT INTO jobs (note_id) VALUES (%s)", (note["id"],))
        return note


def take_job() -> dict[str, Any] | None:
    """Claim and finish the oldest queued job, or None when there is none."""
    with connect() as conn:
        return conn.one(_CLAIM_SQLITE if conn.sqlite else _CLAIM_POSTGRES)


def job_counts() -> dict[str, int]:
    """How many jobs are in each state."""
    with connect() as conn:
        rows = conn.all("SELECT state, count(*) AS n FROM jobs GROUP BY state")
        return {row["state"]: int(row["n"]) for row in rows}


def schema_revision() -> str | None:
    """The Alembic revision the database is at (None before the first migration)."""
    with connect() as conn:
        exists = (
            "SELECT 1 AS t FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'"
            if conn.sqlite
            else "SELECT 1 AS t WHERE to_regclass('alembic_version') IS NOT NULL"
        )
        if conn.one(exists) is None:
            return None
        row = conn.one("SELECT version_num FROM alembic_version")
        return None if row is None else str(row["version_num"])
