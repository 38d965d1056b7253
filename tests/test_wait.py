"""Waiting for PostgreSQL, TCP and HTTP, and the retry loop every wait shares, against real servers.

Every transient and permanent case of the database wait that a real PostgreSQL can produce is made here on
a server of the test's own (``own_server``: a copy of an initdb template, ~0.2 s to start),
and checked both at the classification and at the exit code the user sees.
"""

from __future__ import annotations

import http.server
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import psycopg
import pytest
from postgres_fixtures import PostgresServer, _bin, free_port

from entrykit.database import parse_database_url
from entrykit.errors import Cancelled, ConfigError, DatabaseRefused, DependencyNotReady
from entrykit.settings import Settings
from entrykit.waits.http import wait_for_http
from entrykit.waits.postgres import classify_connect_error, wait_for_database
from entrykit.waits.retry import MAX_RETRY_INTERVAL, NotReadyYet, retry_until_ready
from entrykit.waits.run import wait_for_dependencies
from entrykit.waits.tcp import wait_for_tcp

ENTRYKIT = [sys.executable, "-m", "entrykit"]


@pytest.fixture
def own_server() -> Iterator[PostgresServer]:
    """A started server this test may stop, restart, pause or reconfigure."""
    server = PostgresServer(
        settings={
            "max_connections": 6,
            "superuser_reserved_connections": 0,
            "reserved_connections": 0,
        }
    )
    server.start()
    try:
        yield server
    finally:
        server.close()


def entrykit(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("ENTRYKIT_", "PG"))}
    full_env.pop("DATABASE_URL", None)
    full_env.update(env or {})
    return subprocess.run(
        [*ENTRYKIT, *args], env=full_env, capture_output=True, text=True, timeout=timeout, **kwargs
    )  # type: ignore[call-overload]


def later(seconds: float, action: object) -> threading.Timer:
    timer = threading.Timer(seconds, action)  # type: ignore[arg-type]
    timer.daemon = True
    timer.start()
    return timer


def deadline_in(seconds: float) -> float:
    return time.monotonic() + seconds


def wait_url(url: str, within: float) -> int:
    """Wait for a wait URL (any scheme) as ENTRYKIT_WAIT_FOR does; the number of tries."""
    from entrykit.waits.check import wait_until_ready
    from entrykit.waits.schemes import check_for_url

    check = check_for_url(url)
    assert check is not None
    return wait_until_ready(check, deadline_in(within))


def refused_at_once(url: str, match: str, within: float = 3) -> DatabaseRefused:
    """Waiting for ``url`` fails with exit 21 in less than ``within`` seconds."""
    started = time.monotonic()
    with pytest.raises(DatabaseRefused, match=match) as caught:
        wait_url(url, 30)
    assert time.monotonic() - started < within
    return caught.value


# -- the retry schedule, without sleeping ----------------------------------------------------


class FakeClock:
    def __init__(self, attempt_cost: float = 0.001) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self.attempt_cost = attempt_cost

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_retry_interval_grows_to_a_quarter_second_and_stops_at_the_deadline(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    timeouts: list[float] = []

    def attempt(timeout: float) -> None:
        timeouts.append(timeout)
        clock.now += clock.attempt_cost
        raise NotReadyYet("Connection refused")

    caplog.set_level(logging.INFO, "entrykit.wait")
    with pytest.raises(DependencyNotReady) as caught:
        retry_until_ready(
            "database db:5432",
            "database postgresql://u:***@db/x",
            attempt,
            deadline=clock() + 12,
            clock=clock,
            sleep=clock.sleep,
        )
    assert clock.sleeps[:5] == pytest.approx([0.05, 0.1, 0.2, 0.25, 0.25])
    assert max(clock.sleeps) <= MAX_RETRY_INTERVAL <= 0.5
    assert clock.now == pytest.approx(1012, abs=0.01)  # never sleeps past the deadline
    assert timeouts[0] == 5.0 and min(timeouts) > 0  # bounded attempt, at most 5 s
    assert "Connection refused" in str(caught.value)
    assert f"({len(timeouts)} tries)" in str(caught.value)
    waiting = [r.getMessage() for r in caplog.records if "waiting for" in r.getMessage()]
    # one line at the first failure, then one every 5 s: at 0, 5 and 10 s
    assert len(waiting) == 3, waiting
    assert waiting[0].startswith("waiting for database postgresql://u:***@db/x: Connection")
    assert waiting[1].startswith("still waiting for") and "(5.1 s)" in waiting[1]


def test_success_logs_target_time_and_tries(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    results = iter([NotReadyYet("refused")] * 6 + [None])

    def attempt(timeout: float) -> None:
        clock.now += 0.01
        result = next(results)
        if result is not None:
            raise result

    caplog.set_level(logging.INFO, "entrykit.wait")
    tries = retry_until_ready(
        "database db:5432",
        "database x",
        attempt,
        deadline=clock() + 60,
        clock=clock,
        sleep=clock.sleep,
    )
    assert tries == 7
    assert "database db:5432 ready after 1.17 s (7 tries)" in caplog.text


def test_cancel_stops_between_attempts() -> None:
    cancel = threading.Event()
    later(0.3, cancel.set)
    started = time.monotonic()
    with pytest.raises(Cancelled):
        wait_for_database("postgresql://u:p@127.0.0.1:1/db", deadline_in(30), cancel=cancel)
    assert time.monotonic() - started < 0.6


# -- URLs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scheme",
    ["postgresql", "postgres", "postgresql+psycopg", "postgresql+psycopg2", "postgresql+asyncpg"],
)
def test_every_postgres_scheme_is_waited_on_with_psycopg(
    postgres_server: PostgresServer, scheme: str
) -> None:
    url = postgres_server.url(scheme=scheme)
    target = wait_for_database(url, deadline_in(10))
    assert target.conninfo.startswith("postgresql://")
    assert target.sqlalchemy_url.startswith("postgresql+psycopg://")
    assert target.display == f"127.0.0.1:{postgres_server.port}"


def test_percent_encoded_password_with_reserved_characters(
    postgres_server: PostgresServer,
) -> None:
    password = "p%@/:w?#x"
    postgres_server.create_role("percent_user", password)
    url = postgres_server.url(user="percent_user", password=password)
    assert "%25%40%2F%3A" in url
    wait_for_database(url, deadline_in(10))
    # the raw password appears nowhere a user sees it
    assert password not in parse_database_url(url).masked
    assert "***" in parse_database_url(url).masked


def test_unix_socket_host_in_the_authority_and_in_the_query(
    postgres_server: PostgresServer,
) -> None:
    socket_dir = str(postgres_server.data).replace("/", "%2F")
    port = postgres_server.port
    wait_for_database(f"postgresql://postgres@{socket_dir}:{port}/postgres", deadline_in(10))
    wait_for_database(
        f"postgresql+psycopg://postgres@/postgres?host={postgres_server.data}&port={port}",
        deadline_in(10),
    )


def test_sslmode_is_honoured(postgres_server: PostgresServer) -> None:
    wait_for_database(postgres_server.url(query="sslmode=disable"), deadline_in(10))
    wait_for_database(
        postgres_server.url(scheme="postgresql+asyncpg", query="ssl=prefer"), deadline_in(10)
    )
    started = time.monotonic()
    # the test server has no certificate: requiring TLS can never succeed
    with pytest.raises(DatabaseRefused, match="SSL was required"):
        wait_for_database(postgres_server.url(query="sslmode=require"), deadline_in(30))
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    "url",
    [
        "redis://u:p@db/app",
        "postgresql://u:p@db:notaport/app",
        "postgresql://u:p@db:99999/app",
        "postgresql://u:%zz@db/app",
        "postgresql://u:p@db/app?sslmode=bogus",
        "postgresql://u:p@db/app?nosuchoption=1",
        "sqlite://relative-without-slash.db",
    ],
)
def test_bad_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        wait_for_database(url, deadline_in(10))
    assert ":p@" not in str(caught.value)


def test_sqlite_needs_no_wait_but_a_writable_folder(tmp_path: Path) -> None:
    assert wait_for_database(f"sqlite:///{tmp_path}/app.db", deadline_in(0)).kind == "sqlite"
    target = parse_database_url("sqlite:///data/app.db", cwd=tmp_path)
    assert target.sqlite_path == tmp_path / "data" / "app.db"
    assert parse_database_url(f"sqlite:///{tmp_path}/a.db").sqlite_path == tmp_path / "a.db"
    for in_memory in ("sqlite:///:memory:", "sqlite:///"):  # it would die with entrykit
        with pytest.raises(ConfigError, match="in-memory"):
            wait_for_database(in_memory, deadline_in(0))
    with pytest.raises(ConfigError, match="is a folder"):
        wait_for_database(f"sqlite:///{tmp_path}", deadline_in(0))
    for uri in ("sqlite:///file:app.db?uri=true", "sqlite:///file:m?mode=memory&uri=true"):
        with pytest.raises(ConfigError, match="URI filenames"):
            wait_for_database(uri, deadline_in(0))


def test_a_sqlite_path_is_percent_decoded_as_sqlalchemy_reads_it(tmp_path: Path) -> None:
    (tmp_path / "my dir").mkdir()
    target = parse_database_url(f"sqlite:///{tmp_path}/my%20dir/app%25.db")
    assert target.sqlite_path == tmp_path / "my dir" / "app%.db"
    assert wait_for_database(f"sqlite:///{tmp_path}/my%20dir/app.db", deadline_in(0))
    with pytest.raises(ConfigError, match="does not exist"):
        wait_for_database(f"sqlite:///{tmp_path}/missing/app.db", deadline_in(0))
    readonly = tmp_path / "ro"
    readonly.mkdir()
    readonly.chmod(0o555)
    if os.geteuid() != 0:  # root writes anywhere; a non-root user is refused
        with pytest.raises(ConfigError, match="not writable"):
            wait_for_database(f"sqlite:///{readonly}/app.db", deadline_in(0))


def test_sqlite_relative_path_folder_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        wait_for_database("sqlite:///data/app.db", deadline_in(0), cwd=tmp_path)
    (tmp_path / "data").mkdir()
    wait_for_database("sqlite:///data/app.db", deadline_in(0), cwd=tmp_path)


# -- permanent errors: at once, exit 21 ------------------------------------------------------


def _refused_quickly(url: str, match: str) -> None:
    started = time.monotonic()
    with pytest.raises(DatabaseRefused, match=match) as caught:
        wait_for_database(url, deadline_in(30))
    assert time.monotonic() - started < 5
    assert "secret" not in str(caught.value)


def test_wrong_password_is_refused_at_once(postgres_server: PostgresServer) -> None:
    _refused_quickly(postgres_server.url(password="wrong-secret"), "password authentication")


def test_unknown_role_is_refused_at_once(postgres_server: PostgresServer) -> None:
    _refused_quickly(
        postgres_server.url(user="ghost", password="secret"), "password authentication"
    )


def test_missing_password_is_refused_at_once(postgres_server: PostgresServer) -> None:
    postgres_server.create_role("needs_password", "secret-pw")
    _refused_quickly(postgres_server.url(user="needs_password"), "no password supplied")


def test_unknown_database_is_refused_at_once(postgres_server: PostgresServer) -> None:
    _refused_quickly(postgres_server.url(dbname="no_such_db"), 'database "no_such_db" does not')


def test_nologin_role_is_refused_at_once(postgres_server: PostgresServer) -> None:
    postgres_server.create_role("cannot_login", "secret", "NOLOGIN")
    _refused_quickly(
        postgres_server.url(user="cannot_login", password="secret"), "not permitted to log in"
    )


def test_missing_connect_privilege_is_refused_at_once(postgres_server: PostgresServer) -> None:
    postgres_server.create_role("no_connect", "secret")
    name = postgres_server.create_database()
    postgres_server.execute(f'REVOKE CONNECT ON DATABASE "{name}" FROM PUBLIC')
    _refused_quickly(
        postgres_server.url(user="no_connect", password="secret", dbname=name),
        "permission denied for database",
    )


def test_pg_hba_reject_is_refused_at_once(own_server: PostgresServer) -> None:
    own_server.create_role("blocked", "secret")
    own_server.set_hba("host all blocked 127.0.0.1/32 reject")
    _refused_quickly(own_server.url(user="blocked", password="secret"), "pg_hba.conf rejects")


# -- transient errors: retried until the server is ready -------------------------------------


def _waits_then_succeeds(
    url: str,
    fix_after: float,
    fix: object,
    expected_error: str,
    caplog: pytest.LogCaptureFixture,
    within: float = 30,
) -> float:
    caplog.set_level(logging.INFO, "entrykit.wait")
    later(fix_after, fix)
    started = time.monotonic()
    wait_for_database(url, deadline_in(within))
    took = time.monotonic() - started
    assert took >= fix_after * 0.9, "should have waited for the fix"
    waiting = [r.getMessage() for r in caplog.records if "waiting for" in r.getMessage()]
    assert waiting and expected_error in waiting[0], caplog.text
    assert "ready after" in caplog.text
    return took


def test_refused_connection_is_retried_until_the_server_starts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = PostgresServer()
    try:
        _waits_then_succeeds(server.url(), 1.0, server.start, "Connection refused", caplog)
        # seen within one interval (0.25 s) and a try of the server's own "ready" log line;
        # measured from that line, so that a slow start on a loaded machine does not count
        assert time.time() - server.ready_times()[-1] < 0.25 + 0.5
    finally:
        server.close()


def test_missing_unix_socket_is_retried(caplog: pytest.LogCaptureFixture) -> None:
    server = PostgresServer()
    try:
        server.start()
        server.stop()  # the folder stays, the socket file is gone
        socket_dir = str(server.data).replace("/", "%2F")
        url = f"postgresql://postgres@{socket_dir}:{server.port}/postgres"
        _waits_then_succeeds(url, 0.8, server.start, "No such file or directory", caplog)
    finally:
        server.close()


def test_too_many_clients_is_retried_until_a_slot_frees(
    own_server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    # max_connections=6, nothing reserved: the test takes every slot
    held = [psycopg.connect(own_server.url()) for _ in range(6)]
    with pytest.raises(psycopg.OperationalError) as probe:
        psycopg.connect(own_server.url(), connect_timeout=2)
    assert classify_connect_error(probe.value) == "transient"

    def free() -> None:
        held.pop().close()

    try:
        _waits_then_succeeds(own_server.url(), 1.0, free, "too many clients", caplog)
    finally:
        for conn in held:
            conn.close()


def test_role_connection_limit_is_retried(
    postgres_server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    postgres_server.create_role("one_at_a_time", "secret", "CONNECTION LIMIT 1")
    url = postgres_server.url(user="one_at_a_time", password="secret")
    held = psycopg.connect(url)
    try:
        _waits_then_succeeds(url, 0.8, held.close, "too many connections for role", caplog)
    finally:
        held.close()


def test_shutting_down_then_restarted_while_waiting(
    own_server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    session = psycopg.connect(own_server.url())
    own_server.stop("smart")  # waits for our session; refuses new ones meanwhile
    time.sleep(0.2)

    def restart() -> None:
        session.close()
        own_server.wait_stopped()
        own_server.start()

    _waits_then_succeeds(own_server.url(), 1.0, restart, "shutting down", caplog)
    assert "Connection refused" in caplog.text or len(own_server.ready_times()) == 2


def test_starting_up_is_retried(caplog: pytest.LogCaptureFixture) -> None:
    # A standby whose restore_command is slow stays in "starting up" until it gives up on
    # the archive and replays its own WAL.
    server = PostgresServer()
    try:
        server.start()
        server.stop()
        (server.data / "standby.signal").write_text("")
        server.settings["restore_command"] = "sleep 1; exit 1"
        server.start(wait=False)
        time.sleep(0.3)
        _waits_then_succeeds(server.url(), 0.0, lambda: None, "starting up", caplog)
    finally:
        server.close()


def test_standby_not_accepting_connections_is_retried_until_promoted(
    own_server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    own_server.stop()
    (own_server.data / "standby.signal").write_text("")
    own_server.settings["hot_standby"] = "off"
    own_server.start()

    def promote() -> None:
        subprocess.run(
            [str(_bin("pg_ctl")), "promote", "-D", str(own_server.data), "-w"],
            user=own_server.user,
            check=True,
            capture_output=True,
        )

    _waits_then_succeeds(own_server.url(), 1.0, promote, "not accepting connections", caplog)


def test_unresponsive_server_times_out_each_attempt(own_server: PostgresServer) -> None:
    own_server.pause()  # the kernel accepts connections, the postmaster never answers
    try:
        started = time.monotonic()
        with pytest.raises(DependencyNotReady, match="timed out"):
            wait_for_database(own_server.url(), deadline_in(2.5))
        # attempts are bounded by the time left, below libpq's minimum of 2 s too
        assert time.monotonic() - started < 3.2
    finally:
        own_server.resume()
    wait_for_database(own_server.url(), deadline_in(10))


def test_name_that_does_not_resolve_is_retried_until_the_deadline() -> None:
    started = time.monotonic()
    with pytest.raises(DependencyNotReady) as caught:
        wait_for_database("postgresql://app:secret@db.invalid:5432/app", deadline_in(1.5))
    assert 1.4 < time.monotonic() - started < 3.5
    assert "db.invalid" in str(caught.value) and "secret" not in str(caught.value)


def test_connection_closed_by_the_server_is_retried() -> None:
    # What a proxy or a dying server does: accept, then hang up before the handshake.
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.close()

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        url = f"postgresql://u:p@127.0.0.1:{port}/db"
        with pytest.raises(psycopg.OperationalError) as probe:
            psycopg.connect(url, connect_timeout=2)
        assert "closed the connection" in str(probe.value)
        assert classify_connect_error(probe.value) == "transient"
        with pytest.raises(DependencyNotReady, match="closed the connection"):
            wait_for_database(url, deadline_in(1.0))
    finally:
        stop.set()
        server.join()
        listener.close()


@pytest.mark.parametrize(
    "message",
    [
        "FATAL:  the database system is starting up",
        "FATAL:  the database system is in recovery mode",
        "FATAL:  the database system is not yet accepting connections",
        "FATAL:  remaining connection slots are reserved for roles with the SUPERUSER attribute",
        "server closed the connection unexpectedly",
        "connection timeout expired",
    ],
)
def test_transient_texts_without_sqlstate(message: str) -> None:
    # The ones a real server produces only in a split-second window (crash recovery) or
    # through a proxy; the real ones above exercise the same texts.
    assert classify_connect_error(psycopg.OperationalError(message)) == "transient"


# -- TCP and HTTP ----------------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    statuses: ClassVar[list[int]] = [200]

    def do_GET(self) -> None:
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        self.send_response(status)
        if 300 <= status < 400:
            self.send_header("Location", "http://127.0.0.1:1/elsewhere")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[tuple[str, type[_Handler]]]:
    handler = type("Handler", (_Handler,), {"statuses": [200]})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/healthz", handler
    finally:
        server.shutdown()


def test_http_2xx_and_3xx_are_ready_5xx_is_retried(
    http_server: tuple[str, type[_Handler]],
) -> None:
    url, handler = http_server
    wait_for_http(url, deadline_in(5))
    handler.statuses = [302]
    wait_for_http(url, deadline_in(5))  # not followed to the dead Location
    handler.statuses = [503, 503, 200]
    assert retry_until_ready  # the same loop as the database
    wait_for_http(url, deadline_in(5))
    handler.statuses = [404]
    with pytest.raises(DependencyNotReady, match="HTTP 404"):
        wait_for_http(url, deadline_in(0.5))
    with pytest.raises(ConfigError):
        wait_for_http("ftp://example/", deadline_in(0.5))


def test_tcp_ready_and_not_ready() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        wait_for_tcp(f"127.0.0.1:{listener.getsockname()[1]}", deadline_in(2))
    finally:
        listener.close()
    with pytest.raises(DependencyNotReady, match="refused"):
        wait_for_tcp(f"127.0.0.1:{free_port()}", deadline_in(0.5))
    with pytest.raises(ConfigError):
        wait_for_tcp("no-port", deadline_in(0.5))


def test_tcp_port_that_opens_later() -> None:
    port = free_port()
    holder: list[socket.socket] = []
    later(0.7, lambda: holder.append(socket.create_server(("127.0.0.1", port))))
    started = time.monotonic()
    wait_for_tcp(f"127.0.0.1:{port}", deadline_in(5))
    assert 0.6 < time.monotonic() - started < 1.3
    holder[0].close()


def test_one_deadline_for_every_dependency(postgres_server: PostgresServer) -> None:
    settings = Settings.load(
        options={
            "database_url": postgres_server.url(),
            "wait_timeout": 1.5,
            "wait_tcp": [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"],
        },
        environ={},
    )
    started = time.monotonic()
    with pytest.raises(DependencyNotReady):
        wait_for_dependencies(settings)
    assert time.monotonic() - started < 2.5  # not 1.5 s per dependency


def test_wait_1_without_a_database_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        wait_for_dependencies(Settings.load(options={"wait": "1"}, environ={}))


# -- the command line: exit codes ------------------------------------------------------------


@pytest.mark.slow
def test_cli_server_starting_two_seconds_later_then_exec() -> None:
    server = PostgresServer()
    try:
        later(2.0, server.start)
        started = time.monotonic()
        result = entrykit(
            "run",
            "--",
            sys.executable,
            "-c",
            "import time; print('the app runs', time.time())",
            env={"DATABASE_URL": server.url(), "ENTRYKIT_WAIT_TIMEOUT": "30"},
        )
        took = time.monotonic() - started
        assert result.returncode == 0, result.stderr
        assert "the app runs" in result.stdout
        assert f"database 127.0.0.1:{server.port} ready after" in result.stderr
        assert took > 2.0
        # from the server's "ready" line to the app's first line: one interval, a try, the
        # exec and the app's own start (slow on a loaded machine, hence not from the start)
        app_started = float(result.stdout.split()[-1])
        assert app_started - server.ready_times()[-1] < 1.5
        assert server.password not in result.stderr
    finally:
        server.close()


@pytest.mark.slow
def test_cli_server_restarted_while_waiting() -> None:
    server = PostgresServer(settings={"max_connections": 5})
    server.start()
    try:
        session = psycopg.connect(server.url())
        server.stop("smart")  # refuses new sessions with "shutting down" until ours ends
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ENTRYKIT_", "PG"))}
        env.update(DATABASE_URL=server.url(), ENTRYKIT_WAIT_TIMEOUT="30")
        process = subprocess.Popen(
            [*ENTRYKIT, "run", "--", sys.executable, "-c", "print('exec')"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert process.stderr is not None
        lines = []
        for line in process.stderr:  # restart once entrykit has seen the shutdown
            lines.append(line)
            if "shutting down" in line:
                break
        session.close()
        server.wait_stopped()
        time.sleep(0.5)  # a while with nothing listening
        server.start()
        stdout, stderr = process.communicate(timeout=60)
        stderr = "".join(lines) + stderr
        assert process.returncode == 0, stderr
        assert "exec" in stdout
        assert "shutting down" in stderr and "ready after" in stderr
    finally:
        server.close()


@pytest.mark.slow
def test_cli_unresolvable_host_exits_20_at_the_deadline() -> None:
    started = time.monotonic()
    result = entrykit("wait", "--db", "postgresql://app:hunter2pw@db.invalid/app", "--timeout", "2")
    assert result.returncode == 20, result.stderr
    assert 2.0 <= time.monotonic() - started < 5
    assert "db.invalid" in result.stderr and "hunter2pw" not in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("case", ["wrong password", "unknown role", "unknown database"])
def test_cli_refusals_exit_21_in_under_5_seconds(
    postgres_server: PostgresServer, case: str
) -> None:
    url = {
        "wrong password": postgres_server.url(password="wrong-pass-123"),
        "unknown role": postgres_server.url(user="nobody_here", password="wrong-pass-123"),
        "unknown database": postgres_server.url(dbname="nothing_here"),
    }[case]
    started = time.monotonic()
    result = entrykit("wait", "--db", url, "--timeout", "30")
    assert result.returncode == 21, result.stderr
    assert time.monotonic() - started < 5
    assert "wrong-pass-123" not in result.stderr
    assert postgres_server.password not in result.stderr


@pytest.mark.slow
def test_cli_bad_url_exits_10() -> None:
    result = entrykit("wait", "--db", "postgresql://u:p@db:99999/x", "--timeout", "5")
    assert result.returncode == 10, result.stderr


@pytest.mark.slow
def test_cli_wait_tcp_and_http(http_server: tuple[str, type[_Handler]]) -> None:
    url, _ = http_server
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        result = entrykit(
            "wait",
            "--tcp",
            f"127.0.0.1:{listener.getsockname()[1]}",
            "--http",
            url,
            "--timeout",
            "5",
        )
        assert result.returncode == 0, result.stderr
    finally:
        listener.close()
    result = entrykit("wait", "--tcp", f"127.0.0.1:{free_port()}", "--timeout", "1")
    assert result.returncode == 20, result.stderr


def _can_unshare() -> bool:
    try:
        probe = ["unshare", "--pid", "--fork", "--mount-proc", "true"]
        return subprocess.run(probe, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.slow
@pytest.mark.skipif(not _can_unshare(), reason="needs unshare --pid (root or CAP_SYS_ADMIN)")
def test_pid_1_waiting_for_a_database_that_never_comes_stops_on_sigterm() -> None:
    # entrykit is PID 1 of a new PID namespace, like in a container without tini.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENTRYKIT_")}
    env["DATABASE_URL"] = f"postgresql://app:pw@127.0.0.1:{free_port()}/app"
    outer = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount-proc", *ENTRYKIT, "run", "--", "true"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        child = _wait_for_child(outer.pid)
        assert _ns_pid(child) == 1
        time.sleep(1.5)  # well into the wait
        assert outer.poll() is None
        sent = time.monotonic()
        os.kill(child, signal.SIGTERM)
        code = outer.wait(timeout=5)
        took = time.monotonic() - sent
    finally:
        if outer.poll() is None:
            outer.kill()
    stderr = outer.stderr.read() if outer.stderr else ""
    assert code == 143, stderr
    assert took < 1.0, stderr


def _wait_for_child(pid: int, timeout: float = 5) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except FileNotFoundError:
            children = []
        if children:
            return int(children[0])
        time.sleep(0.02)
    raise AssertionError("unshare started no child")


def _ns_pid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return int(line.split()[-1])
    raise AssertionError("no NSpid")


@pytest.mark.slow
def test_cli_sqlite_in_a_missing_folder_exits_10() -> None:
    result = entrykit("wait", "--db", "sqlite:////nonexistent/x.db")
    assert result.returncode == 10, result.stderr
    assert "/nonexistent does not exist" in result.stderr


def test_cancellable_sleep_wakes_when_cancelled() -> None:
    from entrykit.waits.retry import cancellable_sleep

    cancel = threading.Event()
    later(0.2, cancel.set)
    started = time.monotonic()
    cancellable_sleep(cancel)(10)
    assert time.monotonic() - started < 1.0
    started = time.monotonic()
    cancellable_sleep(None)(0.1)  # without an event: a plain sleep
    assert time.monotonic() - started >= 0.1
