"""The migration lock that lets one replica migrate while the others wait (INTERFACE.md §5).

On PostgreSQL a session advisory lock, polled with ``pg_try_advisory_lock`` on a dedicated
autocommit connection: a blocking ``pg_advisory_lock`` would deadlock with
``CREATE INDEX CONCURRENTLY``. On SQLite an ``flock`` on a file beside the database.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from entrykit.database import DatabaseTarget, open_connection
from entrykit.errors import Cancelled, ConfigError, MigrationLockTimeout
from entrykit.waits.retry import Clock, Sleep, retry_intervals

if TYPE_CHECKING:
    from entrykit.settings import Settings

log = logging.getLogger("entrykit.migrate")

# One key for every entrykit: advisory locks are per database, so two apps sharing a database
# only ever wait for each other's migrations. (The first 8 bytes of sha256(b"entrykit migrate").)
LOCK_KEY = 0x61311B851FCE9DCB
LOCK_POLL_FIRST = 0.05
LOCK_POLL_MOST = 0.5
HOLDER_LOG_EVERY = 15.0


def _poll_lock(
    try_lock: Callable[[], bool],
    holder: Callable[[], str],
    name: str,
    *,
    timeout: float,
    cancel: threading.Event | None,
    clock: Clock,
    sleep: Sleep | None,
) -> float:
    """Call ``try_lock`` until it returns True; return the seconds it took.

    Logs who holds the lock when the wait starts and every 15 s. Raises MigrationLockTimeout
    after ``timeout`` seconds, Cancelled when ``cancel`` is set.
    """
    sleep = sleep or (cancel.wait if cancel is not None else time.sleep)
    interval = retry_intervals(LOCK_POLL_FIRST, LOCK_POLL_MOST)
    started = clock()
    next_log = started
    tries = 0
    while not try_lock():
        now = clock()
        if now >= next_log:
            log.info("waiting for %s (%.0f s so far), held by %s", name, now - started, holder())
            next_log = now + HOLDER_LOG_EVERY
        if now - started >= timeout:
            raise MigrationLockTimeout(
                f"waited {now - started:.0f} s for {name} "
                f"(ENTRYKIT_MIGRATE_LOCK_TIMEOUT={timeout:g}), held by {holder()}"
            )
        if cancel is not None and cancel.is_set():
            raise Cancelled(f"stopped waiting for {name}")
        tries += 1
        sleep(min(interval(tries), max(0.0, started + timeout - now)))
    waited = clock() - started
    if tries:
        log.info("got %s after %.2f s", name, waited)
    return waited


class LockSession(Protocol):
    """The connection the PostgreSQL lock is taken on (a psycopg autocommit connection)."""

    def execute(self, query: str, params: Any = ...) -> Any: ...

    def close(self) -> None: ...


def application_name() -> str:
    """How our sessions show in pg_stat_activity: who holds the lock, from which host."""
    return f"entrykit migrate {socket.gethostname()} pid {os.getpid()}"[:63]


def _connect_lock_session(conninfo: str) -> LockSession:
    return open_connection(conninfo, application_name=application_name())


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
def postgres_migration_lock(
    conninfo: str,
    *,
    timeout: float,
    key: int = LOCK_KEY,
    cancel: threading.Event | None = None,
    connect: Callable[[str], LockSession] = _connect_lock_session,
    clock: Clock = time.monotonic,
    sleep: Sleep | None = None,
) -> Iterator[float]:
    """Hold the replicas' migration lock; yields the seconds spent waiting for it.

    Polls ``pg_try_advisory_lock`` on its own autocommit connection, logging who holds the
    lock every 15 s. Raises MigrationLockTimeout after ``timeout`` seconds, ConfigError when
    the lock does not show for our backend in ``pg_locks`` (a transaction pooler between us
    and the server), Cancelled.
    """
    session = connect(conninfo)
    backend: list[int] = []

    def try_lock() -> bool:
        row = session.execute(
            "SELECT pg_try_advisory_lock(%s), pg_backend_pid()", (key,)
        ).fetchone()
        backend[:] = [int(row[1])]
        return bool(row[0])

    held = False
    try:
        waited = _poll_lock(
            try_lock,
            lambda: _lock_holder(session, key),
            "the migration lock",
            timeout=timeout,
            cancel=cancel,
            clock=clock,
            sleep=sleep,
        )
        held = True
        _check_not_pooled(session, key, backend[0], lambda: connect(conninfo))
        yield waited
    finally:
        if held:
            with contextlib.suppress(Exception):
                session.execute("SELECT pg_advisory_unlock(%s)", (key,))
        with contextlib.suppress(Exception):
            session.close()


def _check_not_pooled(
    session: LockSession, key: int, locked_by: int, connect_other: Callable[[], LockSession]
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
            "the migration lock does not stay with our session: the database URL goes through "
            "a transaction pooler (PgBouncer?). Set ENTRYKIT_MIGRATE_URL to a direct "
            "connection to PostgreSQL for migrations"
        )


@contextlib.contextmanager
def sqlite_migration_lock(
    database: Path,
    *,
    timeout: float,
    cancel: threading.Event | None = None,
    clock: Clock = time.monotonic,
    sleep: Sleep | None = None,
) -> Iterator[float]:
    """The SQLite counterpart: an ``flock`` on ``DATABASE.migrate-lock`` beside the database.

    Raises MigrationLockTimeout, Cancelled.
    """
    path = database.with_name(database.name + ".migrate-lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)

    def try_lock() -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def holder() -> str:
        return os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"

    try:
        waited = _poll_lock(
            try_lock,
            holder,
            f"the migration lock {path}",
            timeout=timeout,
            cancel=cancel,
            clock=clock,
            sleep=sleep,
        )
        os.ftruncate(fd, 0)
        since = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {since}\n".encode(), 0)
        yield waited
    finally:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing releases the flock


@contextlib.contextmanager
def migration_lock(
    target: DatabaseTarget, settings: Settings, cancel: threading.Event | None
) -> Iterator[float]:
    """Hold the lock that fits ``target``; yields the seconds spent waiting for it.

    Raises MigrationLockTimeout, Cancelled, and ConfigError behind a transaction pooler.
    """
    if target.kind == "postgresql":
        with postgres_migration_lock(
            target.conninfo, timeout=settings.migrate_lock_timeout, cancel=cancel
        ) as waited:
            yield waited
    elif target.sqlite_path is not None:
        with sqlite_migration_lock(
            target.sqlite_path, timeout=settings.migrate_lock_timeout, cancel=cancel
        ) as waited:
            yield waited
    else:
        yield 0.0  # an in-memory database belongs to this process alone
