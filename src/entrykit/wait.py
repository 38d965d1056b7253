"""Waiting for the database, TCP and HTTP dependencies (INTERFACE.md §4).

Every wait is a loop of bounded attempts with a short, growing pause between them, all inside
one deadline. An attempt either succeeds, fails in a way that waiting may cure (``NotReadyYet``:
refused, no such host yet, starting up, too many clients, ...) or fails for good (an
``EntrykitError`` such as ``DatabaseRefused``), which ends the wait at once.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from entrykit.errors import (
    Cancelled,
    ConfigError,
    DatabaseRefused,
    DependencyNotReady,
)
from entrykit.logs import mask_url
from entrykit.settings import POSTGRES_SCHEMES, split_host_port

if TYPE_CHECKING:
    import psycopg

    from entrykit.settings import Settings

log = logging.getLogger("entrykit.wait")

FIRST_RETRY_INTERVAL = 0.05
# The contract allows 0.5 s; a quarter second keeps "seen within half a second" true even
# with the attempt's own cost added, and a refused connection costs the server nothing.
MAX_RETRY_INTERVAL = 0.25
CONNECT_TIMEOUT = 5.0  # per attempt; libpq's default is to wait for the kernel (minutes)
PROGRESS_EVERY = 5.0  # seconds between "still waiting" lines

SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")

Clock = Callable[[], float]
Sleep = Callable[[float], object]


class NotReadyYet(Exception):
    """An attempt failed in a way that waiting may cure; the text says how."""


# -- database URLs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DatabaseTarget:
    """A database URL taken apart: what to connect to and how to show it in logs."""

    url: str  # as configured (may hold a password: show it with mask_url only)
    kind: Literal["postgresql", "sqlite"]
    conninfo: str = ""  # libpq URL, driver part removed: postgresql://...
    sqlite_path: Path | None = None  # None for sqlite:///:memory:

    @property
    def display(self) -> str:
        """``host:port`` (or the socket folder, or the SQLite path) for log lines."""
        if self.kind == "sqlite":
            return str(self.sqlite_path or ":memory:")
        from psycopg.conninfo import conninfo_to_dict

        params = conninfo_to_dict(self.conninfo)
        # No host or port in the URL: libpq takes PGHOST/PGPORT or its defaults.
        hosts = str(params.get("host") or "default host").split(",")
        ports = str(params.get("port") or "5432").split(",")
        if len(ports) < len(hosts):
            ports += [ports[-1]] * (len(hosts) - len(ports))
        shown = []
        for host, port in zip(hosts, ports, strict=False):
            host = f"[{host}]" if ":" in host else host
            shown.append(f"{host}:{port or '5432'}")
        return ",".join(shown)

    @property
    def masked(self) -> str:
        return mask_url(self.url)

    @property
    def sqlalchemy_url(self) -> str:
        """The URL for SQLAlchemy/Alembic: driver ``postgresql+psycopg``, or ``sqlite:///ABS``."""
        if self.kind == "sqlite":
            return f"sqlite:///{self.sqlite_path}" if self.sqlite_path else "sqlite://"
        return "postgresql+psycopg://" + self.conninfo.split("://", 1)[1]


def parse_database_url(url: str, *, cwd: Path | None = None) -> DatabaseTarget:
    """Take a database URL of INTERFACE.md §4 apart; relative SQLite paths are taken from ``cwd``.

    Raises ConfigError for any other scheme or a URL libpq cannot parse.
    """
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if sep and scheme in ("sqlite", "sqlite+pysqlite"):
        return _parse_sqlite(url, rest, cwd or Path.cwd())
    if not sep or scheme not in POSTGRES_SCHEMES:
        raise ConfigError(
            f"unsupported database URL {mask_url(url)!r}: expected postgresql://, postgres://, "
            "postgresql+psycopg://, postgresql+psycopg2://, postgresql+asyncpg:// or sqlite:///PATH"
        )
    conninfo = _libpq_query("postgresql://" + rest)
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(conninfo)
    except ProgrammingError as error:
        raise ConfigError(f"invalid database URL {mask_url(url)!r}: {_one_line(error)}") from None
    for port in str(params.get("port") or "").split(","):
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise ConfigError(f"invalid port {port!r} in database URL {mask_url(url)!r}")
    sslmode = params.get("sslmode")
    if sslmode is not None and sslmode not in SSLMODES:
        raise ConfigError(
            f"invalid sslmode {sslmode!r} in database URL {mask_url(url)!r}: "
            f"expected one of {', '.join(SSLMODES)}"
        )
    return DatabaseTarget(url=url, kind="postgresql", conninfo=conninfo)


def _libpq_query(conninfo: str) -> str:
    """asyncpg spells libpq's ``sslmode`` as ``ssl``; accept both so one URL serves every driver."""
    parts = urlsplit(conninfo)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    if not any(key == "ssl" for key, _ in pairs):
        return conninfo
    pairs = [("sslmode" if key == "ssl" else key, value) for key, value in pairs]
    return urlunsplit(parts._replace(query=urlencode(pairs, safe="/")))


def _parse_sqlite(url: str, rest: str, cwd: Path) -> DatabaseTarget:
    # SQLAlchemy's convention: sqlite:///relative.db, sqlite:////absolute.db, sqlite:// = memory
    if not rest.startswith("/"):
        raise ConfigError(f"invalid SQLite URL {url!r}: expected sqlite:///PATH")
    path_text = rest[1:].split("?", 1)[0]
    if path_text in ("", ":memory:"):
        return DatabaseTarget(url=url, kind="sqlite")
    path = Path(path_text)
    return DatabaseTarget(
        url=url, kind="sqlite", sqlite_path=path if path.is_absolute() else cwd / path
    )


def check_sqlite_folder(target: DatabaseTarget) -> None:
    """A SQLite database needs no wait, but its folder must exist and be writable (ConfigError)."""
    if target.sqlite_path is None:
        return
    folder = target.sqlite_path.parent
    if not folder.is_dir():
        raise ConfigError(f"SQLite database folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"SQLite database folder {folder} is not writable by uid {os.geteuid()}")
    if target.sqlite_path.exists() and not os.access(target.sqlite_path, os.R_OK | os.W_OK):
        raise ConfigError(f"SQLite database {target.sqlite_path} is not writable")


# -- classifying connection errors -----------------------------------------------------------

ErrorKind = Literal["transient", "refused", "config"]

# SQLSTATEs the server sends on a failed login. psycopg's connect errors usually carry none
# (libpq keeps only the text), so the texts below decide; each one is proven by a test
# against a real server (tests/test_wait.py).
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


def _one_line(error: BaseException) -> str:
    """The first line of an error, without libpq's 'connection failed: connection to ...'."""
    text = str(error).strip() or type(error).__name__
    first = text.splitlines()[0].strip()
    # psycopg: 'connection failed: connection to server at "h" (ip), port 5432 failed: REASON'
    marker = " failed: "
    if first.startswith("connection failed:") and marker in first[len("connection failed:") :]:
        first = first.rsplit(marker, 1)[1]
    first = first.removeprefix("FATAL:  ").strip()
    return first or text


# -- the retry loop --------------------------------------------------------------------------


def retry_intervals(
    first: float = FIRST_RETRY_INTERVAL, most: float = MAX_RETRY_INTERVAL
) -> Callable[[int], float]:
    """The pause after the n-th failed attempt (n from 1): doubling from ``first`` to ``most``."""

    def interval(failures: int) -> float:
        return min(most, first * 2.0 ** (failures - 1))

    return interval


def _default_sleep(cancel: threading.Event | None) -> Sleep:
    if cancel is not None:
        return cancel.wait  # a set event wakes the pause at once
    return time.sleep


def retry_until_ready(
    what: str,
    shown: str,
    attempt: Callable[[float], object],
    *,
    deadline: float,
    clock: Clock = time.monotonic,
    sleep: Sleep | None = None,
    cancel: threading.Event | None = None,
    interval: Callable[[int], float] | None = None,
    logger: logging.Logger = log,
) -> int:
    """Call ``attempt(timeout)`` until it returns; return the number of tries.

    ``what`` names the dependency in the ready line (``database db:5432``), ``shown`` in the
    waiting lines (the masked URL). ``attempt`` raises ``NotReadyYet`` for a failure worth
    retrying; any ``EntrykitError`` it raises ends the wait. Raises DependencyNotReady at the
    deadline (with the last error) and Cancelled when ``cancel`` is set.
    """
    sleep = sleep or _default_sleep(cancel)
    interval = interval or retry_intervals()
    started = clock()
    tries = 0
    last_error = ""
    next_progress = started
    while True:
        if cancel is not None and cancel.is_set():
            raise Cancelled(f"stopped waiting for {what}")
        now = clock()
        tries += 1
        try:
            attempt(max(0.1, min(CONNECT_TIMEOUT, deadline - now)))
        except NotReadyYet as error:
            last_error = str(error)
        else:
            _log_ready(logger, what, clock() - started, tries)
            return tries
        now = clock()
        if now >= next_progress:
            prefix = "waiting for" if tries == 1 else "still waiting for"
            logger.info("%s %s: %s (%.1f s)", prefix, shown, last_error, now - started)
            next_progress = (now if tries == 1 else next_progress) + PROGRESS_EVERY
        if now >= deadline:
            raise DependencyNotReady(
                f"{what} not ready after {now - started:.1f} s ({tries} tries): {last_error}"
            )
        sleep(min(interval(tries), deadline - now))


def _log_ready(logger: logging.Logger, what: str, seconds: float, tries: int) -> None:
    logger.info(
        "%s ready after %.2f s (%d %s)", what, seconds, tries, "try" if tries == 1 else "tries"
    )


# -- PostgreSQL ------------------------------------------------------------------------------


Connect = Callable[[str, float], None]


def open_connection(
    conninfo: str,
    timeout: float = CONNECT_TIMEOUT,
    *,
    autocommit: bool = True,
    application_name: str = "entrykit",
) -> psycopg.Connection[Any]:
    """A psycopg connection with a bounded connect timeout; the one way entrykit logs in.

    ``application_name`` shows in pg_stat_activity unless the URL sets its own.
    """
    import psycopg

    return psycopg.connect(
        conninfo,
        autocommit=autocommit,
        connect_timeout=max(2, math.ceil(timeout)),  # libpq rounds anything below 2 up to 2
        fallback_application_name=application_name,
    )


def connect_and_select(conninfo: str, timeout: float) -> None:
    """One readiness attempt: log in and run ``SELECT 1``; errors propagate."""
    with open_connection(conninfo, timeout) as conn:
        conn.execute("SELECT 1")


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
    """Wait until the database at ``url`` accepts a login and ``SELECT 1``, or ``deadline``
    (a ``clock()`` value) passes. SQLite needs no wait, only a writable folder.

    Returns the parsed target. Raises ConfigError (bad URL), DatabaseRefused (authentication,
    unknown database: at once), DependencyNotReady (deadline), Cancelled.
    """
    target = parse_database_url(url, cwd=cwd)
    if target.kind == "sqlite":
        check_sqlite_folder(target)
        return target

    def attempt(timeout: float) -> None:
        try:
            connect(target.conninfo, timeout)
        except Exception as error:
            kind = classify_connect_error(error)
            reason = _one_line(error)
            if kind == "refused":
                raise DatabaseRefused(
                    f"database {target.display} refused {target.masked}: {reason}"
                ) from None
            if kind == "config":
                raise ConfigError(f"database URL {target.masked}: {reason}") from None
            raise NotReadyYet(reason) from None

    retry_until_ready(
        f"database {target.display}",
        f"database {target.masked}",
        attempt,
        deadline=deadline,
        clock=clock,
        sleep=sleep,
        cancel=cancel,
    )
    return target


# -- TCP and HTTP ----------------------------------------------------------------------------


def wait_for_tcp(
    address: str,
    deadline: float,
    *,
    clock: Clock = time.monotonic,
    sleep: Sleep | None = None,
    cancel: threading.Event | None = None,
) -> None:
    """Wait until a TCP connection to ``address`` (HOST:PORT) opens.

    Raises ConfigError, DependencyNotReady, Cancelled.
    """
    host, port = split_host_port(address)

    def attempt(timeout: float) -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError as error:
            raise NotReadyYet(str(error) or type(error).__name__) from None

    retry_until_ready(
        f"tcp {address}",
        f"tcp {address}",
        attempt,
        deadline=deadline,
        clock=clock,
        sleep=sleep,
        cancel=cancel,
    )


def wait_for_http(
    url: str,
    deadline: float,
    *,
    clock: Clock = time.monotonic,
    sleep: Sleep | None = None,
    cancel: threading.Event | None = None,
) -> None:
    """Wait until ``url`` answers a GET with 2xx or 3xx (redirects are not followed).

    Raises ConfigError, DependencyNotReady, Cancelled.
    """
    from entrykit.health import check_url, failure_reason, http_status, is_healthy

    check_url(url)
    shown = mask_url(url)

    def attempt(timeout: float) -> None:
        try:
            status = http_status(url, timeout)
        except (OSError, HTTPException) as error:
            raise NotReadyYet(failure_reason(error)) from None
        if not is_healthy(status):
            raise NotReadyYet(f"HTTP {status}")

    retry_until_ready(
        f"http {shown}",
        f"http {shown}",
        attempt,
        deadline=deadline,
        clock=clock,
        sleep=sleep,
        cancel=cancel,
    )


# -- all of them -----------------------------------------------------------------------------


def wait_for_dependencies(
    settings: Settings,
    *,
    cancel: threading.Event | None = None,
    clock: Clock = time.monotonic,
) -> None:
    """Wait for the database (when ``settings.should_wait_for_database``), every
    ``wait_tcp`` and every ``wait_http``, all within one deadline of ``settings.wait_timeout``.

    Raises ConfigError, DatabaseRefused, DependencyNotReady, Cancelled.
    """
    deadline = clock() + settings.wait_timeout
    if settings.should_wait_for_database:
        if not settings.database_url:
            raise ConfigError(
                "ENTRYKIT_WAIT=1 asks to wait for the database, "
                "but neither DATABASE_URL nor ENTRYKIT_DATABASE_URL is set"
            )
        wait_for_database(
            settings.database_url, deadline, cwd=settings.cwd, clock=clock, cancel=cancel
        )
    for address in settings.wait_tcp:
        wait_for_tcp(address, deadline, clock=clock, cancel=cancel)
    for url in settings.wait_http:
        wait_for_http(url, deadline, clock=clock, cancel=cancel)
