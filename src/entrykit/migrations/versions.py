"""Reading which revisions a database is at: cheaply on a readiness connection, through the
project's env.py (its version table, its schema, its connection), and on entrykit's own
connection (to prove that an upgrade reached the database entrykit was given).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from entrykit.errors import EntrykitError, MigrationFailed
from entrykit.migrations.env_logging import below_warning, logging_survives_fileconfig
from entrykit.migrations.failures import described_error

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    from sqlalchemy.engine import Connection

DEFAULT_VERSION_TABLE = "alembic_version"


class VersionTable(NamedTuple):
    """Where env.py keeps the applied revisions (``version_table``, ``version_table_schema``)."""

    name: str = DEFAULT_VERSION_TABLE
    schema: str | None = None


class EnvView(NamedTuple):
    """What env.py showed: the database's heads, where it keeps them, and whether it ran on
    the connection entrykit offered."""

    heads: tuple[str, ...]
    table: VersionTable
    on_our_connection: bool


def _sorted_versions(rows: Any) -> tuple[str, ...]:
    return tuple(sorted(str(row[0]) for row in rows))


def read_postgres_versions(conn: Any) -> tuple[str, ...] | None:
    """Heads in ``alembic_version`` on the search path, on a psycopg connection; None when
    there is no such table or it cannot be read."""
    try:
        row = conn.execute("SELECT to_regclass('alembic_version')").fetchone()
        if row is None or row[0] is None:
            return None
        return _sorted_versions(conn.execute("SELECT version_num FROM alembic_version"))
    except Exception:  # no privilege, odd schema: env.py will tell
        return None


def read_mysql_versions(conn: Any) -> tuple[str, ...] | None:
    """Heads in ``alembic_version`` on a PyMySQL connection; None when there is none."""
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT version_num FROM alembic_version")
            return _sorted_versions(cursor.fetchall())
    except Exception:  # 1146: no such table; no privilege: env.py will tell
        return None


def read_sqlite_versions(path: Path | None) -> tuple[str, ...] | None:
    """Heads in ``alembic_version`` of a SQLite file, read-only; None when there is none."""
    import sqlite3

    if path is None or not path.exists():
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            return _sorted_versions(conn.execute("SELECT version_num FROM alembic_version"))
    except sqlite3.Error:
        return None


def heads_through_env(config: Config, script: ScriptDirectory) -> EnvView:
    """The database's heads as the project's env.py sees them (its version table, schema).

    Raises MigrationFailed when env.py fails or never runs the migrations context, and
    whatever EntrykitError env.py's set-up raises (a broken logging section: ConfigError).
    """
    from alembic.runtime.environment import EnvironmentContext

    seen: list[EnvView] = []
    offered = config.attributes.get("connection")

    def read(rev: Any, context: Any) -> list[Any]:
        table = VersionTable(context.version_table, context.version_table_schema)
        heads = tuple(sorted(context.get_current_heads()))
        seen.append(EnvView(heads, table, context.connection is offered))
        return []

    try:
        with (
            _without_context_lines(),
            logging_survives_fileconfig(),
            EnvironmentContext(config, script, fn=read, dont_mutate=True),
        ):
            script.run_env()
    except EntrykitError:
        raise
    except Exception as error:
        raise MigrationFailed(
            f"reading the database's revision through env.py failed: {described_error(error)}"
        ) from error
    finally:
        end_transaction(offered)
    if not seen:
        raise MigrationFailed(
            "the Alembic env.py did not run the migrations context "
            "(context.run_migrations() was never called)"
        )
    return seen[0]


def heads_on(connection: Connection, table: VersionTable) -> tuple[str, ...]:
    """The heads in ``table`` read on ``connection`` (entrykit's own, not env.py's); empty
    when the table does not exist there. Raises MigrationFailed when it cannot be read."""
    from alembic.runtime.migration import MigrationContext

    try:
        with _without_context_lines():
            context = MigrationContext.configure(
                connection,
                opts={"version_table": table.name, "version_table_schema": table.schema},
            )
            return tuple(sorted(context.get_current_heads()))
    except Exception as error:
        raise MigrationFailed(
            f"reading {table.name} on entrykit's own connection failed: {described_error(error)}"
        ) from error
    finally:
        end_transaction(connection)


@contextlib.contextmanager
def _without_context_lines() -> Iterator[None]:
    """Alembic's "Context impl PostgresqlImpl." lines belong to the upgrade, not to each look.
    A filter, not a level: env.py's fileConfig resets the levels of alembic's loggers."""
    chatty = logging.getLogger("alembic.runtime.migration")
    chatty.addFilter(below_warning)
    try:
        yield
    finally:
        chatty.removeFilter(below_warning)


def end_transaction(connection: Connection | None) -> None:
    """Roll back what a read left open, so that the next env.py run starts clean."""
    if connection is not None and connection.in_transaction():
        with contextlib.suppress(Exception):
            connection.rollback()
