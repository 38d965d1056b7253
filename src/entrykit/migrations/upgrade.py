"""Alembic migrations, in-process, applied once by replicas that start together
(docs/database.md).

The replica protocol:

1. While waiting for the database, the readiness connection also reads ``alembic_version``:
   a database already at the scripts' heads costs that one short connection and nothing else.
2. Otherwise the heads are read through the project's env.py (its version table, its schema),
   which tells what is pending, or that the database is at a revision the scripts don't know.
3. To apply, a replica takes the migration lock (``locks.py``), re-reads the heads
   once it holds it, upgrades what is still pending, and unlocks. The others, which waited,
   find nothing left to do.
4. Whenever env.py reports the database at the target, entrykit reads the version table on
   its own connection too: an env.py that builds its own URL migrates another database, and
   that is a failure, never a success.
"""

from __future__ import annotations

import contextlib
import logging
import textwrap
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

from entrykit.database import (
    DatabaseTarget,
    open_connection,
    open_mysql_connection,
    parse_database_url,
)
from entrykit.errors import Cancelled, ConfigError, MigrationFailed
from entrykit.logs import redacted_stdio
from entrykit.migrations.alembic_config import (
    load_alembic_config,
    quiet_alembic_imports,
    script_directory,
)
from entrykit.migrations.connection import alembic_connection
from entrykit.migrations.env_logging import logging_survives_fileconfig
from entrykit.migrations.failures import described_error, failed_revision
from entrykit.migrations.head_wait import poll_until_migrated
from entrykit.migrations.locks import application_name, migration_lock
from entrykit.migrations.revisions import (
    check_known,
    describe,
    pending_revisions,
    resolve_target,
    revision_files,
)
from entrykit.migrations.versions import (
    EnvView,
    end_transaction,
    heads_on,
    heads_through_env,
    read_mysql_versions,
    read_postgres_versions,
    read_sqlite_versions,
)
from entrykit.waits.postgres import wait_for_database
from entrykit.waits.retry import Clock, NotReadyYet, Sleep

if TYPE_CHECKING:
    from pathlib import Path

    from alembic.config import Config
    from alembic.script import ScriptDirectory
    from sqlalchemy.engine import Connection

    from entrykit.settings import Settings

log = logging.getLogger("entrykit.migrate")

HEAD_POLL_MOST = 1.0  # ENTRYKIT_MIGRATE=wait: reading the heads costs a query through env.py
SQL_DEFAULT_URL = "postgresql+psycopg://localhost/"  # --sql with no database configured

# The env.py change, in the message itself: the operator reading the log may not have the docs.
ENV_PY_FIX = """\
Begin run_migrations_online() in env.py with these two lines:
    if (connection := config.attributes.get("connection")) is not None:
        return do_run_migrations(connection)
where do_run_migrations(connection) runs context.configure(connection=connection, ...) and
context.run_migrations() in context.begin_transaction(), as in Alembic's async template
(docs/database.md shows it for sync and async env.py)"""


@dataclass(frozen=True)
class MigrateOutcome:
    """What ``migrate`` found and did. For ``--check``, ``pending`` is what would be applied."""

    current: tuple[str, ...] = ()  # the database's heads when we looked
    target: tuple[str, ...] = ()  # the heads aimed at
    pending: tuple[str, ...] = ()  # revisions not applied, oldest first
    applied: tuple[str, ...] = ()  # revisions this process applied, oldest first
    lock_wait: float = 0.0  # seconds spent waiting for another replica's lock


def migrate(
    settings: Settings,
    *,
    revision: str | None = None,
    check: bool = False,
    sql: bool = False,
    output: TextIO | None = None,
    cancel: threading.Event | None = None,
    clock: Clock = time.monotonic,
) -> MigrateOutcome:
    """Bring the database to ``revision`` (default ``settings.migrate_revision``) with Alembic.

    Waits for the database first (within ``wait_timeout``). ``check`` changes nothing and
    reports in ``pending`` what would be applied; ``sql`` writes the SQL to ``output`` (stdout)
    and needs no database.

    Raises ConfigError (no URL, no or a broken Alembic config, a pooled URL), DatabaseRefused,
    DependencyNotReady, MigrationFailed (a failing revision, several heads, env.py migrating
    another database), MigrationLockTimeout, UnknownRevision, Cancelled.
    """
    target_revision = revision or settings.migrate_revision
    if sql:
        return _print_sql(settings, target_revision, output)
    with redacted_stdio():  # env.py and the migrations run here: their print()s too
        return _migrate(settings, target_revision, check=check, cancel=cancel, clock=clock)


def _migrate(
    settings: Settings,
    target_revision: str,
    *,
    check: bool,
    cancel: threading.Event | None,
    clock: Clock,
) -> MigrateOutcome:
    url = settings.effective_migrate_url
    if not url:
        raise ConfigError("nothing to migrate: set DATABASE_URL (or ENTRYKIT_MIGRATE_URL)")
    target, fast = _wait_and_read_versions(
        url, clock() + settings.wait_timeout, cwd=settings.cwd, cancel=cancel
    )
    config = load_alembic_config(settings, target.sqlalchemy_url)
    script = script_directory(config)
    script_heads = tuple(sorted(script.get_heads()))
    if fast is not None and target_revision in ("head", "heads") and fast == script_heads:
        log.info("database at head %s: nothing to do", ", ".join(script_heads))
        return MigrateOutcome(current=fast, target=script_heads)
    goal = resolve_target(script, target_revision)
    with alembic_connection(target, config, cancel) as connection:
        run = _Run(settings, target, config, script, connection, goal, cancel)
        return run.apply(target_revision, check=check)


def _wait_and_read_versions(
    url: str, deadline: float, *, cwd: Path, cancel: threading.Event | None
) -> tuple[DatabaseTarget, tuple[str, ...] | None]:
    """Wait for the database; return its target and the heads in ``alembic_version`` (None
    when there is no such table), read on the readiness connection where the wait allows it.
    """
    seen: list[tuple[str, ...] | None] = []

    def connect_and_read(conninfo: str, timeout: float) -> None:
        with open_connection(conninfo, timeout, application_name=application_name()) as conn:
            conn.execute("SELECT 1")
            seen.append(read_postgres_versions(conn))

    parse_database_url(url, cwd=cwd)  # a bad URL is exit 10 before any wait
    target = wait_for_database(url, deadline, cwd=cwd, connect=connect_and_read, cancel=cancel)
    if target.kind == "sqlite":
        return target, read_sqlite_versions(target.sqlite_path)
    if target.kind == "mysql" and target.mysql is not None:
        try:  # the MySQL wait has its own connection: one more short one
            with contextlib.closing(open_mysql_connection(target.mysql)) as conn:
                return target, read_mysql_versions(conn)
        except Exception:  # a glitch: env.py reads the heads next anyway
            return target, None
    return target, seen[-1] if seen else None


@dataclass
class _Run:
    """One migration: the project's scripts against one database, on one connection."""

    settings: Settings
    target: DatabaseTarget
    config: Config
    script: ScriptDirectory
    connection: Connection
    goal: tuple[str, ...]
    cancel: threading.Event | None = None

    def apply(self, target_revision: str, *, check: bool) -> MigrateOutcome:
        view = self.look()
        if not check_known(self.script, view.heads, self.settings.migrate_unknown):
            return MigrateOutcome(current=view.heads, target=self.goal)
        pending = pending_revisions(self.script, view.heads, self.goal)
        if not pending:
            self.confirm(view, self.env_says(view))
            log.info("database at %s: nothing to do", describe(self.script, view.heads))
            return MigrateOutcome(current=view.heads, target=self.goal)
        if check:
            log.info(
                "database at %s; %d pending: %s",
                describe(self.script, view.heads),
                len(pending),
                describe(self.script, pending),
            )
            return MigrateOutcome(current=view.heads, target=self.goal, pending=pending)
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("stopped before migrating")
        with migration_lock(self.target, self.settings, self.cancel) as waited:
            view = self.look()  # another replica may have done it meanwhile
            if not check_known(self.script, view.heads, self.settings.migrate_unknown):
                return MigrateOutcome(current=view.heads, target=self.goal, lock_wait=waited)
            pending = pending_revisions(self.script, view.heads, self.goal)
            if not pending:
                self.confirm(view, self.env_says(view))
                log.info(
                    "another replica migrated the database to %s meanwhile",
                    describe(self.script, view.heads),
                )
                return MigrateOutcome(current=view.heads, target=self.goal, lock_wait=waited)
            self.upgrade(target_revision, view.heads, pending)
            self.confirm(view, f"env.py applied {', '.join(pending)}")
        return MigrateOutcome(
            current=view.heads, target=self.goal, applied=pending, lock_wait=waited
        )

    def look(self) -> EnvView:
        return heads_through_env(self.config, self.script)

    def env_says(self, view: EnvView) -> str:
        return f"env.py reports the database at {describe(self.script, view.heads)}"

    def confirm(self, view: EnvView, claim: str) -> None:
        """Raise MigrationFailed unless entrykit's own connection sees the target too;
        ``claim`` is what env.py said or did."""
        own = heads_on(self.connection, view.table)
        if not pending_revisions(self.script, own, self.goal):
            return
        raise MigrationFailed(
            f"{claim}, but {self.target.masked} is at {describe(self.script, own)}: the "
            "migration went to another database (env.py builds its own URL and ignores "
            "sqlalchemy.url and config.attributes['connection']).\n"
            + textwrap.indent(ENV_PY_FIX, "    ")
        )

    def upgrade(
        self, target_revision: str, current: tuple[str, ...], pending: tuple[str, ...]
    ) -> None:
        from alembic import command

        log.info(
            "database at %s; applying %s",
            describe(self.script, current),
            describe(self.script, pending),
        )
        started = time.monotonic()
        try:
            with logging_survives_fileconfig():
                command.upgrade(self.config, target_revision)
        except ConfigError:
            raise
        except Exception as error:
            end_transaction(self.connection)
            failed = failed_revision(
                error,
                revision_files(self.script, pending),
                lambda: "one of " + describe(self.script, pending),
            )
            if self.cancel is not None and self.cancel.is_set():
                raise Cancelled(f"stopped during migration {failed}") from error
            raise MigrationFailed(
                f"migration {failed} failed, the database is at {self.now()}: "
                f"{described_error(error)}"
            ) from error
        log.info("applied %s in %.2f s", ", ".join(pending), time.monotonic() - started)

    def now(self) -> str:
        try:
            return describe(self.script, self.look().heads)
        except Exception:
            return "an unknown revision"


def _print_sql(settings: Settings, target_revision: str, output: TextIO | None) -> MigrateOutcome:
    """``--sql``: Alembic's offline mode from base to the target; no database needed."""
    import sys

    quiet_alembic_imports()
    from alembic import command
    from alembic.util import CommandError

    url = settings.effective_migrate_url
    sqlalchemy_url = (
        parse_database_url(url, cwd=settings.cwd).sqlalchemy_url if url else SQL_DEFAULT_URL
    )
    # The SQL, the product, goes as written to the stream the config holds; print()s from
    # the revisions (loaded here) and env.py go to the redacted sys.stdout
    config = load_alembic_config(settings, sqlalchemy_url, output=output or sys.stdout)
    with redacted_stdio():
        script = script_directory(config)
        goal = resolve_target(script, target_revision)
        try:
            with logging_survives_fileconfig():
                command.upgrade(config, target_revision, sql=True)
        except CommandError as error:
            raise ConfigError(f"--sql: {error}") from None
        return MigrateOutcome(target=goal, pending=pending_revisions(script, (), goal))


def wait_for_head(
    settings: Settings,
    *,
    cancel: threading.Event | None = None,
    clock: Clock = time.monotonic,
    sleep: Sleep | None = None,
) -> None:
    """``ENTRYKIT_MIGRATE=wait``: wait, within ``wait_timeout``, until another replica or a
    migration Job has brought the database to ``settings.migrate_revision``.

    Raises ConfigError, DatabaseRefused, DependencyNotReady (not there by the deadline),
    UnknownRevision (unless ``migrate_unknown`` is ``ignore``), MigrationFailed (env.py
    looks at another database), Cancelled.
    """
    url = settings.database_url or settings.effective_migrate_url
    if not url:
        raise ConfigError("ENTRYKIT_MIGRATE=wait needs DATABASE_URL")
    with redacted_stdio():  # env.py runs here too
        _wait_for_head(settings, url, cancel=cancel, clock=clock, sleep=sleep)


def _wait_for_head(
    settings: Settings,
    url: str,
    *,
    cancel: threading.Event | None,
    clock: Clock,
    sleep: Sleep | None,
) -> None:
    deadline = clock() + settings.wait_timeout
    target = wait_for_database(
        url, deadline, cwd=settings.cwd, clock=clock, sleep=sleep, cancel=cancel
    )
    config = load_alembic_config(settings, target.sqlalchemy_url)
    script = script_directory(config)
    goal = resolve_target(script, settings.migrate_revision)
    what = f"migrations to {', '.join(goal) or 'base'}"
    with alembic_connection(target, config, cancel) as connection:
        run = _Run(settings, target, config, script, connection, goal)

        def attempt(timeout: float) -> None:
            view = run.look()
            if not check_known(script, view.heads, settings.migrate_unknown):
                return
            pending = pending_revisions(script, view.heads, goal)
            if pending:
                raise NotReadyYet(
                    f"database at {describe(script, view.heads)}, {len(pending)} pending "
                    "(another replica or a migration Job applies them)"
                )
            run.confirm(view, run.env_says(view))

        poll_until_migrated(
            what,
            attempt,
            deadline=deadline,
            most=HEAD_POLL_MOST,
            logger=log,
            clock=clock,
            sleep=sleep,
            cancel=cancel,
        )
