"""Alembic migrations, in-process, applied once by replicas that start together (INTERFACE.md §5).

The replica protocol:

1. While waiting for the database, the readiness connection also reads ``alembic_version``:
   a database already at the scripts' heads costs that one short connection and nothing else.
2. Otherwise the heads are read through the project's env.py (its version table, its schema),
   which tells what is pending, or that the database is at a revision the scripts don't know.
3. To apply, a replica takes the migration lock (``locks.py``), re-reads the heads
   once it holds it, upgrades what is still pending, and unlocks. The others, which waited,
   find nothing left to do.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from entrykit.database import DatabaseTarget, open_connection, parse_database_url
from entrykit.errors import (
    Cancelled,
    ConfigError,
    DependencyNotReady,
    EntrykitError,
    MigrationFailed,
    UnknownRevision,
)
from entrykit.migrations.locks import application_name, migration_lock
from entrykit.waits.postgres import wait_for_database
from entrykit.waits.retry import Clock, NotReadyYet, Sleep, retry_intervals, retry_until_ready

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    from sqlalchemy.engine import Connection

    from entrykit.settings import Settings

log = logging.getLogger("entrykit.migrate")

HEAD_POLL_MOST = 1.0  # ENTRYKIT_MIGRATE=wait: reading the heads costs a query through env.py
SQL_DEFAULT_URL = "postgresql+psycopg://localhost/"  # --sql with no database configured


@dataclass(frozen=True)
class MigrateOutcome:
    """What ``migrate`` found and did. For ``--check``, ``pending`` is what would be applied."""

    current: tuple[str, ...] = ()  # the database's heads when we looked
    target: tuple[str, ...] = ()  # the heads aimed at
    pending: tuple[str, ...] = ()  # revisions not applied, oldest first
    applied: tuple[str, ...] = ()  # revisions this process applied, oldest first
    lock_wait: float = 0.0  # seconds spent waiting for another replica's lock


# -- the Alembic configuration ---------------------------------------------------------------


def alembic_config_path(settings: Settings) -> Path:
    """The Alembic config file: ``alembic_config`` from ``settings.cwd``; when that is the
    default ``alembic.ini`` and missing, a ``pyproject.toml`` with ``[tool.alembic]``.

    Raises ConfigError when there is none.
    """
    path = settings.cwd / settings.alembic_config
    if path.is_file():
        return path
    pyproject = settings.cwd / "pyproject.toml"
    if settings.alembic_config == "alembic.ini" and _has_tool_alembic(pyproject):
        return pyproject
    raise ConfigError(
        f"Alembic config {path} not found: set ENTRYKIT_ALEMBIC_CONFIG to your alembic.ini "
        "(or a pyproject.toml with [tool.alembic])"
    )


def _has_tool_alembic(path: Path) -> bool:
    import tomllib

    try:
        with path.open("rb") as file:
            return "alembic" in tomllib.load(file).get("tool", {})
    except (OSError, tomllib.TOMLDecodeError):
        return False


def load_alembic_config(
    settings: Settings, sqlalchemy_url: str, *, output: TextIO | None = None
) -> Config:
    """An Alembic Config for ``settings``, usable from any working directory.

    Alembic takes a relative ``script_location``, ``version_locations`` and
    ``prepend_sys_path`` from the current directory; here they are taken from the config
    file's folder, where ``alembic`` would be run. Raises ConfigError.
    """
    _quiet_alembic_imports()
    from alembic.config import Config

    path = alembic_config_path(settings)
    if path.name == "pyproject.toml":
        config = Config(toml_file=str(path), output_buffer=output)
    else:
        beside = path.parent / "pyproject.toml"
        config = Config(
            str(path),
            toml_file=str(beside) if _has_tool_alembic(beside) else None,
            output_buffer=output,
        )
    here = path.parent.resolve()
    try:
        script_location = config.get_alembic_option("script_location")
        if not script_location:
            raise ConfigError(f"{path} sets no script_location")
        config.set_main_option("script_location", _escape(_from(here, script_location)))
        paths = config.get_prepend_sys_paths_list() or []
        locations = config.get_version_locations_list() or []
    except ValueError as error:
        raise ConfigError(f"{path}: {error}") from None
    import sys

    for entry in reversed([_from(here, p) for p in paths]):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    if locations:
        config.set_main_option("path_separator", "os")
        config.set_main_option(
            "version_locations", _escape(os.pathsep.join(_from(here, p) for p in locations))
        )
    config.set_main_option("sqlalchemy.url", _escape(sqlalchemy_url))
    return config


def _quiet_alembic_imports() -> None:
    """Alembic announces each of its plugins at INFO while importing; the alembic CLI never
    shows these lines (its logging is not set up yet then), nor do we."""
    plugins = logging.getLogger("alembic.runtime.plugins")
    if plugins.level == logging.NOTSET:
        plugins.setLevel(logging.WARNING)


def _below_warning(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING


def _from(here: Path, location: str) -> str:
    """``location`` taken from ``here`` unless absolute or a ``package:folder`` resource."""
    if os.path.isabs(location) or (":" in location and not location.startswith(".")):
        return location
    return str(here / location)


def _escape(value: str) -> str:
    return value.replace("%", "%%")  # ConfigParser interpolation


def _script_directory(config: Config) -> ScriptDirectory:
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    try:
        return ScriptDirectory.from_config(config)
    except CommandError as error:
        raise ConfigError(f"Alembic scripts: {error}") from None


# -- revisions -------------------------------------------------------------------------------


def _resolve_target(script: ScriptDirectory, revision: str) -> tuple[str, ...]:
    """The heads ``revision`` stands for. Raises MigrationFailed for an ambiguous ``head`` and
    ConfigError for a revision the scripts don't have."""
    from alembic.script.revision import MultipleHeads, RevisionError
    from alembic.util import CommandError

    try:
        found = script.revision_map.get_revisions(revision)
        return tuple(s.revision for s in found if s is not None and not isinstance(s, str))
    except MultipleHeads:
        heads = ", ".join(script.get_heads())
        # Exit 30, not 10: the settings are fine, the scripts are not (two branches were never
        # merged), and the image must be rebuilt.
        raise MigrationFailed(
            f"the migration scripts have several heads ({heads}); nothing was applied. "
            "Merge them (`alembic merge heads`) or set ENTRYKIT_MIGRATE_REVISION=heads "
            "to apply every branch"
        ) from None
    except (RevisionError, CommandError) as error:
        raise ConfigError(f"migration target {revision!r}: {error}") from None


def _ancestors(script: ScriptDirectory, heads: tuple[str, ...]) -> set[str]:
    found: set[str] = set()
    for head in heads:
        found.update(s.revision for s in script.iterate_revisions(head, "base"))
    return found


def _unknown(script: ScriptDirectory, heads: tuple[str, ...]) -> list[str]:
    from alembic.script.revision import RevisionError
    from alembic.util import CommandError

    unknown = []
    for head in heads:
        try:
            script.revision_map.get_revision(head)
        except (RevisionError, CommandError):
            unknown.append(head)
    return unknown


def _pending(
    script: ScriptDirectory, current: tuple[str, ...], target: tuple[str, ...]
) -> tuple[str, ...]:
    missing = _ancestors(script, target) - _ancestors(script, current)
    oldest_first = [s.revision for s in reversed(list(script.walk_revisions()))]
    return tuple(rev for rev in oldest_first if rev in missing)


def _describe(script: ScriptDirectory, revisions: tuple[str, ...]) -> str:
    if not revisions:
        return "base (empty)"
    parts = []
    for rev in revisions:
        try:
            doc = (script.get_revision(rev).doc or "").strip().splitlines()
        except Exception:
            doc = []
        parts.append(f"{rev} ({doc[0]})" if doc else rev)
    return ", ".join(parts)


def _check_known(script: ScriptDirectory, current: tuple[str, ...], settings: Settings) -> bool:
    """False (after a warning) when the database is ahead and unknown revisions are ignored.

    Raises UnknownRevision otherwise.
    """
    unknown = _unknown(script, current)
    if not unknown:
        return True
    names = ", ".join(unknown)
    if settings.migrate_unknown == "ignore":
        log.warning(
            "the database is at revision %s, which these migration scripts do not know "
            "(a newer release migrated it?); going on without migrating "
            "(ENTRYKIT_MIGRATE_UNKNOWN=ignore)",
            names,
        )
        return False
    raise UnknownRevision(
        f"the database is at revision {names}, which these migration scripts do not know: "
        "a newer release has migrated it. Deploy that release, or set "
        "ENTRYKIT_MIGRATE_UNKNOWN=ignore to start anyway"
    )


# -- reading the heads -----------------------------------------------------------------------


def _read_default_version_table(conn: Any) -> tuple[str, ...] | None:
    """Heads in ``alembic_version`` on the search path; None when there is no such table."""
    try:
        row = conn.execute("SELECT to_regclass('alembic_version')").fetchone()
        if row is None or row[0] is None:
            return None
        return tuple(
            sorted(
                str(r[0])
                for r in conn.execute("SELECT version_num FROM alembic_version").fetchall()
            )
        )
    except Exception:  # no privilege, odd schema: env.py will tell
        return None


def _read_sqlite_version_table(path: Path | None) -> tuple[str, ...] | None:
    import sqlite3

    if path is None or not path.exists():
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            return tuple(
                sorted(
                    str(r[0])
                    for r in conn.execute("SELECT version_num FROM alembic_version").fetchall()
                )
            )
    except sqlite3.Error:
        return None


def _heads_through_env(config: Config, script: ScriptDirectory) -> tuple[str, ...]:
    """The database's heads as the project's env.py sees them (its version table, schema)."""
    from alembic.runtime.environment import EnvironmentContext

    heads: list[tuple[str, ...]] = []

    def read(rev: Any, context: Any) -> list[Any]:
        heads.append(tuple(sorted(context.get_current_heads())))
        return []

    # Alembic's "Context impl PostgresqlImpl." lines belong to the upgrade, not to each look.
    # A filter, not a level: env.py's fileConfig resets the levels of alembic's loggers.
    chatty = logging.getLogger("alembic.runtime.migration")
    chatty.addFilter(_below_warning)
    try:
        with (
            _logging_survives_fileconfig(),
            EnvironmentContext(config, script, fn=read, dont_mutate=True),
        ):
            script.run_env()
    except EntrykitError:
        raise
    except Exception as error:
        raise MigrationFailed(
            f"reading the database's revision through env.py failed: "
            f"{type(error).__name__}: {_first_line(error)}"
        ) from error
    finally:
        chatty.removeFilter(_below_warning)
    _end_transaction(config)
    if not heads:
        raise MigrationFailed(
            "the Alembic env.py did not run the migrations context "
            "(context.run_migrations() was never called)"
        )
    return heads[0]


def _end_transaction(config: Config) -> None:
    connection = config.attributes.get("connection")
    if connection is not None and connection.in_transaction():
        connection.rollback()


# -- logging around env.py -------------------------------------------------------------------


@contextlib.contextmanager
def _logging_survives_fileconfig() -> Iterator[None]:
    """Keep entrykit's handlers and loggers through env.py's ``logging.config.fileConfig``.

    fileConfig replaces the root handlers and, by default, disables every existing logger:
    entrykit's lines (of this and of side-by-side steps) would vanish or lose their format
    and redaction. While Alembic runs, fileConfig keeps existing loggers enabled and hands
    the root logger back at once; afterwards the root logger and entrykit's loggers are
    restored whatever env.py did. The levels the ini sets for alembic/sqlalchemy stay.
    """
    import logging.config

    from entrykit import logs

    saved = logs.snapshot()

    def restore() -> None:
        if saved[0]:  # nothing installed (library use): leave env.py's set-up alone
            logs.restore_after(saved)

    original = logging.config.fileConfig

    def file_config(
        fname: Any,
        defaults: Any = None,
        disable_existing_loggers: bool = True,
        encoding: str | None = None,
    ) -> None:
        original(fname, defaults, disable_existing_loggers=False, encoding=encoding)
        restore()

    logging.config.fileConfig = file_config
    try:
        yield
    finally:
        logging.config.fileConfig = original
        restore()


# -- connections -----------------------------------------------------------------------------


@contextlib.contextmanager
def _alembic_connection(target: DatabaseTarget, config: Config) -> Iterator[Connection]:
    """An open SQLAlchemy connection, offered to env.py in ``config.attributes``."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    if target.kind == "postgresql":

        def creator() -> Any:
            return open_connection(
                target.conninfo, autocommit=False, application_name=application_name()
            )

        engine = create_engine("postgresql+psycopg://", creator=creator, poolclass=NullPool)
    else:
        engine = create_engine(target.sqlalchemy_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            config.attributes["connection"] = connection
            try:
                yield connection
            finally:
                config.attributes.pop("connection", None)
    finally:
        engine.dispose()


# -- the steps -------------------------------------------------------------------------------


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

    Raises ConfigError (no URL, no Alembic config, a pooled URL), DatabaseRefused,
    DependencyNotReady, MigrationFailed (a failing revision, several heads),
    MigrationLockTimeout, UnknownRevision, Cancelled.
    """
    target_revision = revision or settings.migrate_revision
    if sql:
        return _print_sql(settings, target_revision, output)
    url = settings.effective_migrate_url
    if not url:
        raise ConfigError("nothing to migrate: set DATABASE_URL (or ENTRYKIT_MIGRATE_URL)")

    seen: list[tuple[str, ...] | None] = []

    def connect_and_read(conninfo: str, timeout: float) -> None:
        with open_connection(conninfo, timeout, application_name=application_name()) as conn:
            conn.execute("SELECT 1")
            seen.append(_read_default_version_table(conn))

    parse_database_url(url, cwd=settings.cwd)  # a bad URL is exit 10 before any wait
    target = wait_for_database(
        url,
        clock() + settings.wait_timeout,
        cwd=settings.cwd,
        connect=connect_and_read,
        cancel=cancel,
    )
    if target.kind == "sqlite":
        seen.append(_read_sqlite_version_table(target.sqlite_path))

    config = load_alembic_config(settings, target.sqlalchemy_url)
    script = _script_directory(config)
    script_heads = tuple(sorted(script.get_heads()))
    fast = seen[-1] if seen else None
    if fast is not None and target_revision in ("head", "heads") and fast == script_heads:
        log.info("database at head %s: nothing to do", ", ".join(script_heads))
        return MigrateOutcome(current=fast, target=script_heads)
    goal = _resolve_target(script, target_revision)

    with _alembic_connection(target, config):
        current = _heads_through_env(config, script)
        if not _check_known(script, current, settings):
            return MigrateOutcome(current=current, target=goal)
        pending = _pending(script, current, goal)
        if not pending:
            log.info("database at %s: nothing to do", _describe(script, current))
            return MigrateOutcome(current=current, target=goal)
        if check:
            log.info(
                "database at %s; %d pending: %s",
                _describe(script, current),
                len(pending),
                _describe(script, pending),
            )
            return MigrateOutcome(current=current, target=goal, pending=pending)
        if cancel is not None and cancel.is_set():
            raise Cancelled("stopped before migrating")
        with migration_lock(target, settings, cancel) as waited:
            current = _heads_through_env(config, script)  # another replica may have done it
            if not _check_known(script, current, settings):
                return MigrateOutcome(current=current, target=goal, lock_wait=waited)
            pending = _pending(script, current, goal)
            if not pending:
                log.info(
                    "another replica migrated the database to %s meanwhile",
                    _describe(script, current),
                )
                return MigrateOutcome(current=current, target=goal, lock_wait=waited)
            _upgrade(config, script, target_revision, current, pending)
    return MigrateOutcome(current=current, target=goal, applied=pending, lock_wait=waited)


def _upgrade(
    config: Config,
    script: ScriptDirectory,
    target_revision: str,
    current: tuple[str, ...],
    pending: tuple[str, ...],
) -> None:
    from alembic import command

    log.info("database at %s; applying %s", _describe(script, current), _describe(script, pending))
    started = time.monotonic()
    try:
        with _logging_survives_fileconfig():
            command.upgrade(config, target_revision)
    except Exception as error:
        _end_transaction(config)
        failed = _failed_revision(error, script, pending)
        try:
            now = _describe(script, _heads_through_env(config, script))
        except Exception:
            now = "unknown"
        raise MigrationFailed(
            f"migration {failed} failed: {type(error).__name__}: {_first_line(error)}; "
            f"the database is at {now}"
        ) from error
    log.info("applied %s in %.2f s", ", ".join(pending), time.monotonic() - started)


def _failed_revision(
    error: BaseException, script: ScriptDirectory, pending: tuple[str, ...]
) -> str:
    """The revision whose file raised ``error`` (its deepest frame), else the pending ones."""
    files: dict[str, str] = {}
    for rev in pending:
        with contextlib.suppress(Exception):
            files[os.path.realpath(script.get_revision(rev).path)] = rev
    found = None
    cause: BaseException | None = error
    while cause is not None and found is None:
        for frame, _ in traceback.walk_tb(cause.__traceback__):
            hit = files.get(os.path.realpath(frame.f_code.co_filename))
            if hit is not None:
                found = hit
        cause = cause.__cause__ or cause.__context__
    if found is not None:
        return _describe(script, (found,))
    return "one of " + _describe(script, pending)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else ""


def _print_sql(settings: Settings, target_revision: str, output: TextIO | None) -> MigrateOutcome:
    """``--sql``: Alembic's offline mode from base to the target; no database needed."""
    import sys

    _quiet_alembic_imports()
    from alembic import command
    from alembic.util import CommandError

    url = settings.effective_migrate_url
    sqlalchemy_url = (
        parse_database_url(url, cwd=settings.cwd).sqlalchemy_url if url else SQL_DEFAULT_URL
    )
    config = load_alembic_config(settings, sqlalchemy_url, output=output or sys.stdout)
    script = _script_directory(config)
    goal = _resolve_target(script, target_revision)
    try:
        with _logging_survives_fileconfig():
            command.upgrade(config, target_revision, sql=True)
    except CommandError as error:
        raise ConfigError(f"--sql: {error}") from None
    return MigrateOutcome(target=goal, pending=_pending(script, (), goal))


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
    UnknownRevision (unless ``migrate_unknown`` is ``ignore``), Cancelled.
    """
    url = settings.database_url or settings.effective_migrate_url
    if not url:
        raise ConfigError("ENTRYKIT_MIGRATE=wait needs DATABASE_URL")
    deadline = clock() + settings.wait_timeout
    target = wait_for_database(
        url, deadline, cwd=settings.cwd, clock=clock, sleep=sleep, cancel=cancel
    )
    config = load_alembic_config(settings, target.sqlalchemy_url)
    script = _script_directory(config)
    goal = _resolve_target(script, settings.migrate_revision)
    what = f"migrations to {', '.join(goal) or 'base'}"
    with _alembic_connection(target, config):

        def attempt(timeout: float) -> None:
            current = _heads_through_env(config, script)
            if not _check_known(script, current, settings):
                return
            pending = _pending(script, current, goal)
            if pending:
                raise NotReadyYet(
                    f"database at {_describe(script, current)}, {len(pending)} pending "
                    "(another replica or a migration Job applies them)"
                )

        try:
            retry_until_ready(
                what,
                what,
                attempt,
                deadline=deadline,
                clock=clock,
                sleep=sleep,
                cancel=cancel,
                interval=retry_intervals(0.1, HEAD_POLL_MOST),
                logger=log,
            )
        except DependencyNotReady as error:
            raise DependencyNotReady(
                f"{error} (ENTRYKIT_MIGRATE=wait: is the migration Job running?)"
            ) from None
