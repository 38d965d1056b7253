"""The connection entrykit offers env.py in ``config.attributes["connection"]``, and what
keeps a stopped or killed migration from leaving work behind on the server.

- PostgreSQL: a stop (SIGTERM, another step failing) cancels the running statement, and the
  server is asked to notice a vanished client (``client_connection_check_interval``), so a
  ``kill -9`` does not leave a statement running with its locks either.
- MySQL/MariaDB: a stop sends ``KILL QUERY`` for our connection's thread.
- SQLite: pysqlite commits DDL outside the transaction Alembic opens; with the driver's own
  transaction handling off and an explicit ``BEGIN``, each revision is one transaction, so an
  interrupted migration leaves the last whole revision.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from entrykit.database import DatabaseTarget, open_connection, open_mysql_connection
from entrykit.migrations.locks import application_name

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy.engine import Connection

log = logging.getLogger("entrykit.migrate")

CANCEL_POLL = 0.05  # how often the watcher looks at the cancel event
CLIENT_CHECK_INTERVAL_MS = 500  # how soon PostgreSQL ends a statement whose client vanished
CANCEL_TIMEOUT = 2.0  # for the cancel request itself


@contextlib.contextmanager
def alembic_connection(
    target: DatabaseTarget, config: Config, cancel: threading.Event | None = None
) -> Iterator[Connection]:
    """An open SQLAlchemy connection to ``target``, offered to env.py in ``config.attributes``.

    While inside, setting ``cancel`` cancels the statement running on it on the server.
    """
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    raw: list[Any] = []  # the driver connection, for the cancel request
    if target.kind == "postgresql":

        def creator() -> Any:
            conn = open_connection(
                target.conninfo, autocommit=False, application_name=application_name()
            )
            _check_for_vanished_client(conn)
            raw.append(conn)
            return conn

        engine = create_engine("postgresql+psycopg://", creator=creator, poolclass=NullPool)
    elif target.kind == "mysql" and target.mysql is not None:
        # entrykit's own login: PyMySQL given the URL would send the password as latin-1
        address = target.mysql
        engine = create_engine(
            "mysql+pymysql://",
            creator=lambda: open_mysql_connection(address, autocommit=False),
            poolclass=NullPool,
        )
    else:
        engine = create_engine(target.sqlalchemy_url, poolclass=NullPool)
    try:
        with (
            sqlite_transactional_ddl() if target.kind == "sqlite" else contextlib.nullcontext(),
            engine.connect() as connection,
        ):
            if target.kind == "mysql":
                raw.append(connection.connection.dbapi_connection)
            config.attributes["connection"] = connection
            try:
                with _on_cancel(cancel, lambda: _cancel_statement(target, raw)):
                    yield connection
            finally:
                config.attributes.pop("connection", None)
    finally:
        engine.dispose()


def _check_for_vanished_client(conn: Any) -> None:
    """PostgreSQL 14+ polls the socket of a running statement this often: a client killed
    (``kill -9``, OOM) then loses its statement and locks within half a second, not at the
    statement's end."""
    if conn.info.server_version < 140000:
        return
    try:
        conn.execute(f"SET client_connection_check_interval = {CLIENT_CHECK_INTERVAL_MS}")
        conn.commit()
    except Exception as error:  # a PostgreSQL-compatible server without it: only a fallback
        conn.rollback()
        log.debug("client_connection_check_interval not set: %s", error)


def _cancel_statement(target: DatabaseTarget, raw: list[Any]) -> None:
    if not raw:
        return
    if target.kind == "postgresql":
        from psycopg.pq import TransactionStatus

        # ACTIVE: a statement is running; an idle connection has nothing to cancel
        if not raw[0].closed and raw[0].info.transaction_status == TransactionStatus.ACTIVE:
            raw[0].cancel_safe(timeout=CANCEL_TIMEOUT)
            log.info("stopping: cancelled the statement running on the server")
    elif target.kind == "mysql" and target.mysql is not None and raw[0].open:
        thread = raw[0].thread_id()
        other = open_mysql_connection(target.mysql, CANCEL_TIMEOUT)
        with contextlib.closing(other), other.cursor() as cursor:
            cursor.execute(f"KILL QUERY {int(thread)}")
        log.info("stopping: cancelled the statement running on the server")


@contextlib.contextmanager
def end_sessions_on_stop(
    target: DatabaseTarget, application_name: str, cancel: threading.Event | None
) -> Iterator[None]:
    """While inside, a stop ends the PostgreSQL sessions named ``application_name``: those of a
    migrate command, whose statement would otherwise run on after the command is killed,
    holding its locks, so that the next replica waits behind it."""
    if target.kind != "postgresql":
        yield
        return

    def end_sessions() -> None:
        with open_connection(target.conninfo, CANCEL_TIMEOUT) as conn:
            ended = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = %s AND pid <> pg_backend_pid()",
                (application_name,),
            ).fetchall()
        if ended:
            log.info(
                "stopping: ended the migrate command's %d session(s) on the server", len(ended)
            )

    with _on_cancel(cancel, end_sessions):
        yield


_running: dict[int, Callable[[], None]] = {}  # cancel actions of the statements in flight
_running_lock = threading.Lock()


def cancel_running() -> None:
    """Cancel every migration statement running on a server, and return once the servers
    have the requests. The main thread calls this on a stop signal before the process exits
    (the migration's own thread is blocked in the statement, and a daemon). Raises nothing."""
    with _running_lock:
        actions = list(_running.values())
        _running.clear()
    for action in actions:
        _cancel_one(action)


@contextlib.contextmanager
def _on_cancel(cancel: threading.Event | None, action: Callable[[], None]) -> Iterator[None]:
    """While inside, ``action`` cancels what runs on the connection: run by
    :func:`cancel_running`, or by a watcher thread once ``cancel`` is set (a library caller
    that stops a migration through its event)."""
    key = id(action)
    with _running_lock:
        _running[key] = action
    left = threading.Event()

    def watch() -> None:
        assert cancel is not None
        while not left.is_set():
            if cancel.wait(CANCEL_POLL):
                with _running_lock:
                    mine = _running.pop(key, None)
                if mine is not None and not left.is_set():
                    _cancel_one(mine)
                return

    if cancel is not None:
        threading.Thread(target=watch, name="migrate-cancel", daemon=True).start()
    try:
        yield
    finally:
        left.set()
        with _running_lock:
            _running.pop(key, None)


def _cancel_one(action: Callable[[], None]) -> None:
    try:
        action()
    except Exception as error:  # the server may be gone already
        log.debug("cancelling the running statement failed: %s", error)


@contextlib.contextmanager
def sqlite_transactional_ddl() -> Iterator[None]:
    """While inside, every pysqlite connection SQLAlchemy opens runs DDL inside transactions.

    SQLAlchemy's recipe for pysqlite: the driver's own transaction handling off
    (``isolation_level = None``) and ``BEGIN`` emitted when SQLAlchemy begins one. Installed
    on the Engine class, so an env.py that builds its own engine from ``sqlalchemy.url`` gets
    it too.
    """
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    def on_connect(dbapi_connection: Any, record: Any) -> None:
        if _is_pysqlite(dbapi_connection):
            dbapi_connection.isolation_level = None

    def on_begin(connection: Any) -> None:
        if connection.dialect.name == "sqlite" and connection.dialect.driver == "pysqlite":
            connection.exec_driver_sql("BEGIN")

    event.listen(Engine, "connect", on_connect)
    event.listen(Engine, "begin", on_begin)
    try:
        yield
    finally:
        event.remove(Engine, "begin", on_begin)
        event.remove(Engine, "connect", on_connect)


def _is_pysqlite(dbapi_connection: Any) -> bool:
    import sqlite3

    return isinstance(dbapi_connection, sqlite3.Connection)
