"""A database URL taken apart into a target, and the one way entrykit logs in to it.

Waits, migrations and the replica locks all start from a :class:`DatabaseTarget`: its kind,
where it is (for log lines), the libpq conninfo, the SQLAlchemy URL and the masked form.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from entrykit.errors import ConfigError
from entrykit.logs import mask_url
from entrykit.settings import MYSQL_SCHEMES, POSTGRES_SCHEMES
from entrykit.values import is_port
from entrykit.waits.urls import check_url_form

if TYPE_CHECKING:
    import psycopg
    import pymysql.connections

CONNECT_TIMEOUT = 5.0  # per attempt; libpq's default is to wait for the kernel (minutes)
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


class MysqlAddress(NamedTuple):
    """Where a MySQL/MariaDB server is and how to log in (PyMySQL's connect arguments)."""

    host: str
    port: int
    user: str
    password: str  # percent-decoded; a secret
    database: str
    unix_socket: str | None = None
    # the URL's TLS and charset options as PyMySQL's arguments (waits.mysql_options)
    options: tuple[tuple[str, str | bool], ...] = ()


@dataclass(frozen=True)
class DatabaseTarget:
    """A database URL taken apart: what to connect to and how to show it in logs."""

    url: str  # as configured (may hold a password: show it with mask_url only)
    kind: Literal["postgresql", "mysql", "sqlite"]
    conninfo: str = ""  # libpq URL, driver part removed: postgresql://...
    sqlite_path: Path | None = None  # None for sqlite:///:memory:
    mysql: MysqlAddress | None = None

    @property
    def display(self) -> str:
        """``host:port`` (or the socket folder, or the SQLite path) for log lines."""
        if self.kind == "sqlite":
            return str(self.sqlite_path or ":memory:")
        if self.mysql is not None:
            host = self.mysql.host
            host = f"[{host}]" if ":" in host else host
            return self.mysql.unix_socket or f"{host}:{self.mysql.port}"
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
        if self.kind == "mysql":
            return "mysql+pymysql://" + self.url.split("://", 1)[1]
        return "postgresql+psycopg://" + self.conninfo.split("://", 1)[1]


def parse_database_url(url: str, *, cwd: Path | None = None) -> DatabaseTarget:
    """Take a database URL (docs/reference.md) apart; relative SQLite paths are taken from ``cwd``.

    Raises ConfigError for any other scheme or a URL libpq cannot parse.
    """
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if sep and scheme in ("sqlite", "sqlite+pysqlite"):
        return _parse_sqlite(url, rest, cwd or Path.cwd())
    if sep and scheme in (*MYSQL_SCHEMES, *POSTGRES_SCHEMES):
        check_url_form(url, several_hosts=scheme in POSTGRES_SCHEMES, what="database URL")
    if sep and scheme in MYSQL_SCHEMES:
        return DatabaseTarget(url=url, kind="mysql", mysql=_parse_mysql(url))
    if not sep or scheme not in POSTGRES_SCHEMES:
        raise ConfigError(
            f"unsupported database URL {mask_url(url)!r}: expected postgresql://, postgres://, "
            "postgresql+psycopg://, postgresql+psycopg2://, postgresql+asyncpg://, mysql://, "
            "mariadb://, mysql+pymysql:// (or another mysql+DRIVER://) or sqlite:///PATH"
        )
    conninfo = _libpq_query("postgresql://" + rest)
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(conninfo)
    except ProgrammingError as error:
        raise ConfigError(f"invalid database URL {mask_url(url)!r}: {one_line(error)}") from None
    for port in str(params.get("port") or "").split(","):
        if port and not is_port(port):
            raise ConfigError(f"invalid port {port!r} in database URL {mask_url(url)!r}")
    sslmode = params.get("sslmode")
    if sslmode is not None and sslmode not in SSLMODES:
        raise ConfigError(
            f"invalid sslmode {sslmode!r} in database URL {mask_url(url)!r}: "
            f"expected one of {', '.join(SSLMODES)}"
        )
    return DatabaseTarget(url=url, kind="postgresql", conninfo=conninfo)


def _parse_mysql(url: str) -> MysqlAddress:
    try:
        parts = urlsplit(url)
        port = parts.port or 3306
    except ValueError as error:
        raise ConfigError(f"invalid database URL {mask_url(url)!r}: {error}") from None
    query = dict(parse_qsl(parts.query))
    socket_path = query.get("unix_socket")
    if not parts.hostname and not socket_path:
        raise ConfigError(f"invalid database URL {mask_url(url)!r}: no host")
    from entrykit.waits.mysql_options import mysql_connect_options

    return MysqlAddress(
        host=parts.hostname or "localhost",
        port=port,
        user=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
        database=unquote(parts.path.lstrip("/")),
        unix_socket=socket_path,
        options=tuple(mysql_connect_options(url).items()),
    )


def _libpq_query(conninfo: str) -> str:
    """asyncpg spells libpq's ``sslmode`` as ``ssl``; accept both so one URL serves every driver.

    Raises ConfigError for a URL urllib cannot split (an unclosed ``[``)."""
    try:
        parts = urlsplit(conninfo)
    except ValueError as error:
        raise ConfigError(f"invalid database URL {mask_url(conninfo)!r}: {error}") from None
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    if not any(key == "ssl" for key, _ in pairs):
        return conninfo
    pairs = [("sslmode" if key == "ssl" else key, value) for key, value in pairs]
    return urlunsplit(parts._replace(query=urlencode(pairs, safe="/")))


def _parse_sqlite(url: str, rest: str, cwd: Path) -> DatabaseTarget:
    # SQLAlchemy's convention: sqlite:///relative.db, sqlite:////absolute.db, sqlite:// = memory
    if not rest.startswith("/"):
        raise ConfigError(f"invalid SQLite URL {url!r}: expected sqlite:///PATH")
    path_text, _, query = rest[1:].partition("?")
    if any(key.lower() == "uri" for key, _ in parse_qsl(query, keep_blank_values=True)):
        # SQLAlchemy then opens "file:NAME" as SQLite reads it (mode=memory, vfs=...), which
        # entrykit's migrations and locks would take for a file literally named "file:NAME"
        raise ConfigError(f"SQLite URI filenames (?uri=true) are not supported: {url!r}")
    path_text = unquote(path_text)  # as SQLAlchemy reads it: my%20dir is "my dir"
    if path_text in ("", ":memory:"):
        return DatabaseTarget(url=url, kind="sqlite")
    path = Path(path_text)
    return DatabaseTarget(
        url=url, kind="sqlite", sqlite_path=path if path.is_absolute() else cwd / path
    )


def check_sqlite_folder(target: DatabaseTarget) -> None:
    """A SQLite database needs no wait, but a file whose folder exists and is writable
    (ConfigError)."""
    if target.sqlite_path is None:  # nothing to wait for, migrate or lock: it dies with us
        raise ConfigError(
            f"{target.url!r} is an in-memory SQLite database, which lives only in entrykit's "
            "own process: give a file, sqlite:///PATH"
        )
    if target.sqlite_path.is_dir():
        raise ConfigError(f"SQLite database {target.sqlite_path} is a folder, not a file")
    folder = target.sqlite_path.parent
    if not folder.is_dir():
        raise ConfigError(f"SQLite database folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"SQLite database folder {folder} is not writable by uid {os.geteuid()}")
    if target.sqlite_path.exists() and not os.access(target.sqlite_path, os.R_OK | os.W_OK):
        raise ConfigError(f"SQLite database {target.sqlite_path} is not writable")


# -- connections -----------------------------------------------------------------------------


def one_line(error: BaseException) -> str:
    """The first line of an error, without libpq's 'connection failed: connection to ...'."""
    text = str(error).strip() or type(error).__name__
    first = text.splitlines()[0].strip()
    # psycopg: 'connection failed: connection to server at "h" (ip), port 5432 failed: REASON'
    marker = " failed: "
    if first.startswith("connection failed:") and marker in first[len("connection failed:") :]:
        first = first.rsplit(marker, 1)[1]
    first = first.removeprefix("FATAL:  ").strip()
    return first or text


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


def open_mysql_connection(
    address: MysqlAddress,
    timeout: float = CONNECT_TIMEOUT,
    *,
    read_timeout: float | None = None,
    autocommit: bool = True,
) -> pymysql.connections.Connection[Any]:
    """A PyMySQL connection (in autocommit mode unless asked) with a bounded connect
    timeout; the one way entrykit logs in to MySQL/MariaDB.

    PyMySQL's connect timeout covers the TCP connect only: the login handshake and every
    later read wait ``read_timeout`` (None: for ever), so a readiness probe sets it. Raises
    ConfigError when PyMySQL is not installed (the ``mysql`` extra).
    """
    try:
        import pymysql
    except ImportError:
        raise ConfigError(
            "a MySQL/MariaDB URL needs PyMySQL: pip install 'entrykit[mysql]'"
        ) from None
    extra: dict[str, Any] = dict(address.options)  # TLS (ssl_ca, ssl_verify_cert, ...), charset
    return pymysql.connect(
        host=address.host,
        port=address.port,
        user=address.user or None,
        # PyMySQL would encode a str as latin-1 (an error for '€', a wrong password for
        # 'ä'); MySQL and MariaDB hash the UTF-8 bytes, as their own clients send them
        password=address.password.encode(),
        database=address.database or None,
        unix_socket=address.unix_socket,
        connect_timeout=max(1.0, timeout),
        read_timeout=read_timeout,
        write_timeout=read_timeout,
        autocommit=autocommit,
        **extra,
    )
