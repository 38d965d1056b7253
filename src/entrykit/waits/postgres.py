"""Waiting for the database: PostgreSQL here (a login that runs ``SELECT 1``), MySQL and
MariaDB through ``mysql.py``, and a SQLite folder check.

psycopg's connect errors usually carry no SQLSTATE, so whether a failure is worth retrying is
decided from the server's texts too; each case is proven against a real server in the tests.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from entrykit.database import (
    DatabaseTarget,
    check_sqlite_folder,
    one_line,
    open_connection,
    parse_database_url,
)
from entrykit.waits.check import Check, ErrorKind, raise_classified, wait_until_ready
from entrykit.waits.mysql import mysql_check
from entrykit.waits.retry import Clock, Sleep

# SQLSTATEs the server sends on a failed login. psycopg's connect errors usually carry none
# (libpq keeps only the text), so the texts below decide.
_REFUSED_SQLSTATES = {"28P01", "28000", "3D000", "42501"}
_TRANSIENT_SQLSTATES = {"57P01", "57P02", "57P03", "53300", "53400", "08000", "08001", "08006"}
_REFUSED_TEXTS = (
    "password authentication failed",  # 28P01: wrong password, or a role that does not exist
    "no password supplied",  # the server asks for one and the URL has none
    "no pg_hba.conf entry",  # 28000
    "pg_hba.conf rejects connection",  # 28000
    "is not permitted to log in",  # 28000: NOLOGIN role
    'role "',  # 28000 'role "x" does not exist' under trust/peer auth
    "does not exist",  # 3D000 'database "x" does not exist'
    "permission denied for database",  # 42501: CONNECT privilege revoked
    "server does not support ssl, but ssl was required",
    "certificate verify failed",
    'sslmode value "',  # libpq: sslmode needs an SSL library / is unsupported
    "authentication method",  # 'authentication method N not supported'
    "gssapi",
)
_CONFIG_TEXTS = (
    "invalid connection option",
    "invalid integer value",
    "invalid port number",
    "invalid sslmode value",
    "invalid value for parameter",
)


def classify_connect_error(error: BaseException) -> ErrorKind:
    """Is a failed database connection worth retrying (``transient``), refused for good
    (``refused``: authentication, unknown database, no access) or a bad URL (``config``)?

    Anything not recognised is transient: a slow start must never be mistaken for a refusal,
    while a missed refusal only costs the wait's deadline.
    """
    sqlstate = getattr(error, "sqlstate", None)
    if sqlstate in _REFUSED_SQLSTATES:
        return "refused"
    if sqlstate in _TRANSIENT_SQLSTATES:
        return "transient"
    text = str(error).lower()
    # "too many clients" / "starting up" also come without SQLSTATE: look for them before the
    # refused texts, since 'the database system is starting up' contains no refused text but
    # 'too many connections for role "x"' contains 'role "'.
    if any(
        t in text
        for t in (
            "too many clients",
            "too many connections",
            "connection slots are reserved",
            "starting up",
            "shutting down",
            "in recovery",
            "not yet accepting connections",
            "not accepting connections",
            "hot standby",
        )
    ):
        return "transient"
    if any(t in text for t in _CONFIG_TEXTS):
        return "config"
    if any(t in text for t in _REFUSED_TEXTS):
        return "refused"
    return "transient"


Connect = Callable[[str, float], None]


def connect_and_select(conninfo: str, timeout: float) -> None:
    """One readiness attempt: log in and run ``SELECT 1``; errors propagate."""
    with open_connection(conninfo, timeout) as conn:
        conn.execute("SELECT 1")


def postgres_check(
    target: DatabaseTarget, label: str = "database", connect: Connect = connect_and_select
) -> Check:
    """A psycopg login to the PostgreSQL ``target`` running ``SELECT 1``."""

    def attempt(timeout: float) -> None:
        # libpq's connect timeout is whole seconds, 2 at least: the retry loop's bound on
        # every try keeps this one within the deadline
        try:
            connect(target.conninfo, timeout)
        except Exception as error:
            raise_classified(
                classify_connect_error(error),
                f"{label} {target.display}",
                target.masked,
                one_line(error),
            )

    return Check(f"{label} {target.display}", f"{label} {target.masked}", attempt)


def database_check(
    url: str,
    *,
    cwd: Path | None = None,
    label: str = "database",
    connect: Connect = connect_and_select,
) -> tuple[DatabaseTarget, Check | None]:
    """The target of a database URL and its check (None for SQLite, which needs no wait
    but a writable folder, checked here).

    Raises ConfigError (bad URL, SQLite folder missing or read-only, PyMySQL missing).
    """
    target = parse_database_url(url, cwd=cwd)
    if target.kind == "sqlite":
        check_sqlite_folder(target)
        return target, None
    if target.kind == "mysql":
        return target, mysql_check(target, label)
    return target, postgres_check(target, label, connect)


def wait_for_database(
    url: str,
    deadline: float,
    *,
    cwd: Path | None = None,
    clock: Clock = time.monotonic,
    sleep: Sleep | None = None,
    connect: Connect = connect_and_select,
    cancel: threading.Event | None = None,
) -> DatabaseTarget:
    """Wait until the database at ``url`` (PostgreSQL, or MySQL/MariaDB through mysql.py)
    accepts a login and ``SELECT 1``, or ``deadline`` (a ``clock()`` value) passes. SQLite
    needs no wait, only a writable folder.

    Returns the parsed target. Raises ConfigError (bad URL), DatabaseRefused (authentication,
    unknown database: at once), DependencyNotReady (deadline), Cancelled.
    """
    target, check = database_check(url, cwd=cwd, connect=connect)
    if check is not None:
        wait_until_ready(check, deadline, clock=clock, sleep=sleep, cancel=cancel)
    return target
