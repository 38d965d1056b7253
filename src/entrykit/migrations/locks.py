"""Named cross-replica locks: one replica runs, the others wait (migrations, ``once``).

The migration lock is the lock named for migrations, with its own fixed key; every other
name (``once = true`` commands, ``entrykit once NAME``) gets a key derived from the name.
On PostgreSQL a session advisory lock, polled with ``pg_try_advisory_lock`` on a dedicated
autocommit connection: a blocking ``pg_advisory_lock`` would deadlock with
``CREATE INDEX CONCURRENTLY``. On MySQL/MariaDB ``GET_LOCK`` with a zero timeout, polled on a
dedicated connection. On SQLite an ``flock`` on a file beside the database. ``lock_hold``
polls for any of them and holds it; while a session lock is held, ``lock_keepalive`` keeps its
session from being ended as idle, and a session lost all the same (the backend terminated, a
failover) is logged at once and raised as LockLost when the lock is let go.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from entrykit.database import (
    DatabaseTarget,
    MysqlAddress,
    one_line,
    open_connection,
    open_mysql_connection,
)
from entrykit.errors import ConfigError, DatabaseRefused, DependencyNotReady, EntrykitError
from entrykit.migrations.lock_hold import LockWait, holding
from entrykit.migrations.lock_keepalive import mysql_keep_alive, postgres_keep_alive
from entrykit.specs import check_lock_name  # the rule for command and lock names, its cap
from entrykit.waits.retry import Clock, Sleep, printable

if TYPE_CHECKING:
    from entrykit.settings import Settings

log = logging.getLogger("entrykit.migrate")

# One key for every entrykit: advisory locks are per database, so two apps sharing a database
# only ever wait for each other's migrations. (The first 8 bytes of sha256(b"entrykit migrate").)
LOCK_KEY = 0x61311B851FCE9DCB
MYSQL_NAME_MOST = 64  # GET_LOCK names longer than this are an error on MySQL 5.7+
FILE_NAME_MOST = 255  # bytes in a file name (NAME_MAX of Linux's file systems)


def lock_key(name: str) -> int:
    """The PostgreSQL advisory key of the lock ``name``: 8 bytes of sha256, signed (bigint).

    Hashed under another prefix than the migration lock's, so no name gets ``LOCK_KEY``.
    """
    digest = hashlib.sha256(b"entrykit once " + name.encode()).digest()
    key = int.from_bytes(digest[:8], "big", signed=True)
    return key if key != LOCK_KEY else key ^ 1


class LockSession(Protocol):
    """The connection the PostgreSQL lock is taken on (a psycopg autocommit connection)."""

    def execute(self, query: str, params: Any = ...) -> Any: ...

    def close(self) -> None: ...


def application_name(role: str = "migrate") -> str:
    """How our sessions show in pg_stat_activity: who holds the lock, from which host."""
    return f"entrykit {role} {socket.gethostname()} pid {os.getpid()}"[:63]


def _connect_lock_session(conninfo: str) -> LockSession:
    return open_connection(conninfo, application_name=application_name())


_S = TypeVar("_S")


def open_lock_session(
    connect: Callable[[], _S], label: str, shown: str, kind: Literal["postgresql", "mysql"]
) -> _S:
    """``connect()``, its failure classified as the database wait classifies one, in one line
    naming the lock: DatabaseRefused (exit 21: a refused login, an unknown database),
    DependencyNotReady (exit 20: the server cannot be reached or is not ready; the wait is
    over, so this is not retried), ConfigError (a bad URL)."""
    try:
        return connect()
    except EntrykitError:
        raise
    except Exception as error:
        if kind == "postgresql":
            from entrykit.waits.postgres import classify_connect_error as classify
        else:
            from entrykit.waits.mysql import classify_mysql_error as classify
        why = printable(_driver_reason(error))
        match classify(error):
            case "refused":
                raise DatabaseRefused(f"{label}: {shown} refused the login: {why}") from None
            case "config":
                raise ConfigError(f"{label}: database URL {shown}: {why}") from None
            case _:
                raise DependencyNotReady(f"{label}: cannot connect to {shown}: {why}") from None


def _driver_reason(error: BaseException) -> str:
    """One line: libpq's reason without its 'connection to server ... failed:' preamble, or
    PyMySQL's ``(CODE) message``."""
    if len(error.args) == 2 and isinstance(error.args[0], int):
        return f"({error.args[0]}) {one_line(Exception(error.args[1]))}"
    return one_line(error)


def _split_key(key: int) -> tuple[int, int]:
    """pg_locks shows a bigint advisory key as classid (high 32 bits) and objid (low)."""
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    return unsigned >> 32, unsigned & 0xFFFFFFFF


def _lock_holder(session: LockSession, key: int) -> str:
    classid, objid = _split_key(key)
    try:
        row = session.execute(
            "SELECT a.pid, a.application_name, host(a.client_addr), "
            "extract(epoch FROM now() - a.backend_start)::int "
            "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s "
            "AND l.objid = %s AND l.objsubid = 1",
            (classid, objid),
        ).fetchone()
    except Exception as error:
        return f"unknown ({error})"
    if row is None:
        return "nobody any more"
    pid, app, addr, age = row
    where = ", ".join(str(part) for part in (app or None, addr) if part)
    return f"backend pid {pid}" + (f" ({where})" if where else "") + f", connected {age} s ago"


@contextlib.contextmanager
def postgres_lock(
    conninfo: str,
    *,
    timeout: float,
    key: int = LOCK_KEY,
    label: str = "the migration lock",
    shown: str = "the database",
    cancel: threading.Event | None = None,
    connect: Callable[[str], LockSession] = _connect_lock_session,
    clock: Clock = time.monotonic,
    sleep: Sleep | None = None,
    logger: logging.Logger = log,
) -> Iterator[float]:
    """Hold the advisory lock ``key`` (default: the migration lock); yields the seconds spent
    waiting for it.

    Polls ``pg_try_advisory_lock`` on its own autocommit connection, logging who holds the
    lock every 15 s; kept alive while held. Raises MigrationLockTimeout after ``timeout``
    seconds, ConfigError when the lock does not show for our backend in ``pg_locks`` (a
    transaction pooler between us and the server), Cancelled, LockLost (the session ended
    while waiting or held), and the connection's failure as the database wait classifies it
    (see :func:`open_lock_session`; ``shown`` names the database there).
    """

    def open_session() -> LockSession:
        return open_lock_session(lambda: connect(conninfo), label, shown, "postgresql")

    session = open_session()
    backend: list[int] = []

    def try_lock() -> bool:
        row = session.execute(
            "SELECT pg_try_advisory_lock(%s), pg_backend_pid()", (key,)
        ).fetchone()
        backend[:] = [int(row[1])]
        return bool(row[0])

    with holding(
        try_lock,
        lambda: _lock_holder(session, key),
        lambda: bool(session.execute("SELECT pg_advisory_unlock(%s)", (key,)).fetchone()[0]),
        session.close,
        label,
        LockWait(timeout, cancel, clock, sleep, logger),
        once_held=lambda: _check_not_pooled(session, key, backend[0], open_session, label),
        keep_alive=lambda: postgres_keep_alive(session, label, logger),
    ) as waited:
        yield waited


def _check_not_pooled(
    session: LockSession,
    key: int,
    locked_by: int,
    connect_other: Callable[[], LockSession],
    label: str,
) -> None:
    """ConfigError unless the lock stays with our server session.

    Behind a transaction pooler each statement may run on another server session: the lock
    then does not show for the backend running the next statement, or (the pooler handing
    the idle server session to the next client) a second client session of ours lands on
    the very backend that holds the lock. A direct connection passes both checks.
    """
    classid, objid = _split_key(key)
    row = session.execute(
        "SELECT pg_backend_pid(), EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' "
        "AND granted AND pid = pg_backend_pid() AND classid = %s AND objid = %s "
        "AND objsubid = 1)",
        (classid, objid),
    ).fetchone()
    pooled = row[0] != locked_by or not row[1]
    if not pooled:
        other = connect_other()
        try:
            pooled = other.execute("SELECT pg_backend_pid()").fetchone()[0] == locked_by
        finally:
            other.close()
    if pooled:
        with contextlib.suppress(Exception):
            session.execute("SELECT pg_advisory_unlock(%s)", (key,))
        raise ConfigError(
            f"{label} does not stay with our session: the database URL goes through "
            "a transaction pooler (PgBouncer?). Set ENTRYKIT_MIGRATE_URL to a direct "
            "connection to PostgreSQL for migrations and locks"
        )


@contextlib.contextmanager
def sqlite_lock(
    database: Path,
    *,
    timeout: float,
    suffix: str = ".migrate-lock",
    label: str = "the migration lock",
    cancel: threading.Event | None = None,
    clock: Clock = time.monotonic,
    sleep: Sleep | None = None,
    logger: logging.Logger = log,
) -> Iterator[float]:
    """The SQLite counterpart: an ``flock`` on ``DATABASE<suffix>`` beside the database
    (``app.db.migrate-lock`` for the migration lock).

    Raises MigrationLockTimeout, Cancelled, ConfigError when the file cannot be opened.
    """
    path = database.with_name(database.name + suffix)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:  # a name too long, a read-only folder: nothing a retry mends
        raise ConfigError(f"{label}: cannot open its lock file {path}: {error.strerror}") from None

    def try_lock() -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def holder() -> str:
        return os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"

    def write_holder() -> None:
        os.ftruncate(fd, 0)
        since = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {since}\n".encode(), 0)

    with holding(
        try_lock,
        holder,
        lambda: os.ftruncate(fd, 0),
        lambda: os.close(fd),  # closing releases the flock
        f"{label} {path}",
        LockWait(timeout, cancel, clock, sleep, logger),
        once_held=write_holder,
    ) as waited:
        yield waited


# Back-compatible names: the migration lock is the lock named for migrations.
postgres_migration_lock = postgres_lock
sqlite_migration_lock = sqlite_lock


class MysqlSession(Protocol):
    """The connection GET_LOCK is taken on (a PyMySQL autocommit connection)."""

    def cursor(self) -> Any: ...

    def close(self) -> None: ...


def mysql_lock_name(kind: str, database: str) -> str:
    """The GET_LOCK name: MySQL's locks are server-wide, so the database is part of it."""
    text = f"entrykit {kind} {database}"
    if len(text) <= MYSQL_NAME_MOST:
        return text
    return "entrykit " + hashlib.sha256(text.encode()).hexdigest()[: MYSQL_NAME_MOST - 9]


def _mysql_value(session: MysqlSession, query: str, params: tuple[object, ...]) -> Any:
    with session.cursor() as cursor:
        cursor.execute(query, params)
        row = cursor.fetchone()
    return row[0] if row else None


def _mysql_holder(session: MysqlSession, lock_name: str) -> str:
    try:
        holder = _mysql_value(session, "SELECT IS_USED_LOCK(%s)", (lock_name,))
        if holder is None:
            return "nobody any more"
        with session.cursor() as cursor:
            cursor.execute(
                "SELECT USER, HOST FROM information_schema.PROCESSLIST WHERE ID = %s", (holder,)
            )
            row = cursor.fetchone()
    except Exception as error:
        return f"unknown ({error})"
    return f"connection {holder}" + (f" ({row[0]}@{row[1]})" if row else "")


@contextlib.contextmanager
def mysql_lock(
    address: MysqlAddress,
    lock_name: str,
    *,
    timeout: float,
    label: str = "the migration lock",
    shown: str = "the database",
    cancel: threading.Event | None = None,
    connect: Callable[[MysqlAddress], MysqlSession] = open_mysql_connection,
    clock: Clock = time.monotonic,
    sleep: Sleep | None = None,
    logger: logging.Logger = log,
) -> Iterator[float]:
    """Hold ``GET_LOCK(lock_name)`` on a dedicated connection; yields the seconds waited.

    Polled with a zero timeout, so that the wait can log the holder, be cancelled and time
    out like the other locks; kept alive while held. Raises MigrationLockTimeout, Cancelled,
    ConfigError (PyMySQL missing), LockLost (the session ended while waiting or held), and
    the connection's failure as the database wait classifies it (:func:`open_lock_session`).
    """
    session = open_lock_session(lambda: connect(address), label, shown, "mysql")

    def try_lock() -> bool:
        return bool(_mysql_value(session, "SELECT GET_LOCK(%s, 0)", (lock_name,)) == 1)

    with holding(
        try_lock,
        lambda: _mysql_holder(session, lock_name),
        lambda: _mysql_value(session, "SELECT RELEASE_LOCK(%s)", (lock_name,)) == 1,
        session.close,  # closing the session releases the lock anyway
        label,
        LockWait(timeout, cancel, clock, sleep, logger),
        keep_alive=lambda: mysql_keep_alive(session, label, logger),
    ) as waited:
        yield waited


def sqlite_lock_suffix(database_name: str, name: str) -> str:
    """``.NAME.once-lock``, the lock file's name after the database file's; ``.HASH.once-lock``
    (16 hex digits of sha256) when the whole would pass a file name's 255 bytes."""
    suffix = f".{name}.once-lock"
    if len(os.fsencode(database_name + suffix)) <= FILE_NAME_MOST:
        return suffix
    return f".{hashlib.sha256(name.encode()).hexdigest()[:16]}.once-lock"


@contextlib.contextmanager
def migration_lock(
    target: DatabaseTarget, settings: Settings, cancel: threading.Event | None
) -> Iterator[float]:
    """Hold the lock that fits ``target``; yields the seconds spent waiting for it.

    Raises MigrationLockTimeout, LockLost, Cancelled, and ConfigError behind a transaction
    pooler.
    """
    timeout = settings.migrate_lock_timeout
    shown = target.masked
    if target.kind == "postgresql":
        with postgres_lock(target.conninfo, timeout=timeout, shown=shown, cancel=cancel) as waited:
            yield waited
    elif target.kind == "mysql" and target.mysql is not None:
        name = mysql_lock_name("migrate", target.mysql.database)
        with mysql_lock(target.mysql, name, timeout=timeout, shown=shown, cancel=cancel) as waited:
            yield waited
    elif target.sqlite_path is not None:
        with sqlite_lock(target.sqlite_path, timeout=timeout, cancel=cancel) as waited:
            yield waited
    else:
        yield 0.0  # an in-memory database belongs to this process alone


@contextlib.contextmanager
def named_lock(
    settings: Settings, name: str, cancel: threading.Event | None = None, *, step: str = "prestart"
) -> Iterator[float]:
    """Hold the cross-replica lock ``name`` on the configured database (the migration URL,
    a direct connection); yields the seconds spent waiting for it, which is bounded by
    ``migrate_lock_timeout``. Its log lines are of ``step``.

    Raises ConfigError (no database, an in-memory SQLite database, a bad name, a pooler, a
    lock file that cannot be opened), MigrationLockTimeout, LockLost (exit 31: the lock's
    session ended while waiting, or while held: then after the body ran), Cancelled,
    DatabaseRefused (21) or DependencyNotReady (20) when its connection fails.
    """
    from entrykit.database import parse_database_url

    check_lock_name(name)
    url = settings.effective_migrate_url
    if not url:
        raise ConfigError(
            f"the lock {name} needs a database shared by the replicas: "
            "set DATABASE_URL (or ENTRYKIT_MIGRATE_URL)"
        )
    target = parse_database_url(url, cwd=settings.cwd)
    timeout = settings.migrate_lock_timeout
    label = f"the lock {name}"
    logger = logging.getLogger(f"entrykit.{step}")
    if target.kind == "postgresql":
        lock = postgres_lock(
            target.conninfo,
            timeout=timeout,
            key=lock_key(name),
            label=label,
            shown=target.masked,
            cancel=cancel,
            connect=lambda conninfo: open_connection(
                conninfo, application_name=application_name(f"once {name}")
            ),
            logger=logger,
        )
    elif target.kind == "mysql" and target.mysql is not None:
        lock_name = mysql_lock_name(f"once {name}", target.mysql.database)
        lock = mysql_lock(
            target.mysql,
            lock_name,
            timeout=timeout,
            label=label,
            shown=target.masked,
            cancel=cancel,
            logger=logger,
        )
    elif target.sqlite_path is not None:
        lock = sqlite_lock(
            target.sqlite_path,
            timeout=timeout,
            suffix=sqlite_lock_suffix(target.sqlite_path.name, name),
            label=label,
            cancel=cancel,
            logger=logger,
        )
    else:
        raise ConfigError(f"the lock {name} needs a database file, not an in-memory SQLite")
    with lock as waited:
        logger.info("holding %s", label)
        yield waited
