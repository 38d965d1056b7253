"""What ``entrykit wait`` and ``entrykit healthcheck`` make of bad input: an empty argument,
a URL no retry can cure, an option given a bad value. Each is exit 10 at once with one line
naming the URL (password hidden) or the option as typed, never a traceback and never a wait
to the deadline. Also: ``${VAR}`` in ``--db``/``--tcp``/``--http``, what a server sent
escaped in log lines, a PostgreSQL try held to the deadline, Basic auth from an http URL.
All through ``entrykit`` as a process, against real sockets and servers."""

from __future__ import annotations

import base64
import http.server
import os
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from entrykit_process import clean_env, run_entrykit
from postgres_fixtures import PostgresServer

from entrykit.waits.retry import NotReadyYet, printable
from entrykit.waits.urls import check_url_form

SECRET = "s3cret-Pw-9"  # in URLs below: must never show


def wait(*args: str, timeout: float = 30, **env: str) -> subprocess.CompletedProcess[str]:
    return run_entrykit(["wait", *args], clean_env(**env), timeout=timeout)


def healthcheck(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return run_entrykit(["healthcheck", *args], clean_env(**env))


def assert_config_error(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    """Exit 10 in one line, no traceback, the secret hidden, ``expected`` said."""
    output = result.stdout + result.stderr
    assert result.returncode == 10, output
    assert "Traceback" not in output and SECRET not in output
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, result.stderr
    for text in expected:
        assert text in errors[0], errors[0]


@pytest.fixture
def listening() -> Iterator[tuple[int, int]]:
    """Two ports that accept connections."""
    sockets = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]
    try:
        yield sockets[0].getsockname()[1], sockets[1].getsockname()[1]
    finally:
        for sock in sockets:
            sock.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- empty arguments -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "named"),
    [
        ([""], "URL is empty"),
        ([" "], "URL is empty"),
        (["--db", ""], "--db is empty"),
        (["--http", ""], "--http is empty"),
        (["--tcp", " "], "--tcp is empty"),
        (["--tcp", "127.0.0.1:1,,127.0.0.1:2"], "--tcp holds an empty item"),
    ],
)
def test_an_empty_argument_is_exit_10_not_waiting_for_nothing(args: list[str], named: str) -> None:
    # configured dependencies that are down: an empty argument must neither replace them
    # with nothing (exit 0) nor fall back to them (exit 20)
    started = time.monotonic()
    result = wait(
        *args,
        "--timeout",
        "30",
        ENTRYKIT_WAIT_FOR=f"tcp://127.0.0.1:{closed_port()}",
        DATABASE_URL=f"postgresql://u:{SECRET}@127.0.0.1:{closed_port()}/db",
    )
    assert_config_error(result, named)
    assert time.monotonic() - started < 10


def test_tcp_option_takes_a_comma_list_as_the_variable_does(listening: tuple[int, int]) -> None:
    first, second = listening
    result = wait("--tcp", f"127.0.0.1:{first}, 127.0.0.1:{second}", "--timeout", "10")
    assert result.returncode == 0, result.stderr
    assert f"tcp 127.0.0.1:{first} ready" in result.stderr
    assert f"tcp 127.0.0.1:{second} ready" in result.stderr
    down = closed_port()
    result = wait("--tcp", f"127.0.0.1:{first},127.0.0.1:{down}", "--timeout", "0.5")
    assert result.returncode == 20, result.stderr
    assert f"tcp 127.0.0.1:{down} not ready" in result.stderr


# -- URLs no retry can cure ------------------------------------------------------------------

LONG_LABEL = "a" * 70

BAD_URLS = [
    (f"mysql://u:{SECRET}@127.0.0.1:1/db?charset=bogus", "unknown charset 'bogus'"),
    (f"mysql://u:{SECRET}@127.0.0.1:1/db?charset=", "unknown charset ''"),
    (f"rediss://:{SECRET}@127.0.0.1:1/0?ssl_ca_certs=/nonexistent.pem", "cannot be read"),
    (f"rediss://:{SECRET}@127.0.0.1:1/0?ssl_certfile=/nonexistent.pem", "cannot be read"),
    (f"http://u:pa]{SECRET}@127.0.0.1:1/", "Invalid IPv6 URL"),
    ("http://h:abc/", "the port is not a number"),
    ("http://[::1:1/", "bad IPv6 address"),
    (f"postgresql://u:{SECRET}@[::1:1/db", "bad IPv6 address"),
    ("file://[x/y", "bad IPv6 address"),
    ("unix://[x/y", "bad IPv6 address"),
    ("tcp://..:80", "not a DNS name"),
    (f"redis://:{SECRET}@{LONG_LABEL}.example:6379/0", "not a DNS name"),
    (f"amqp://u:{SECRET}@{LONG_LABEL}:5672/", "not a DNS name"),
    (f"postgresql://u:{SECRET}@{LONG_LABEL}:5432/db", "not a DNS name"),
    ("redis://127.0.0.1 :6379/0", "whitespace"),
    (f"mysql://u:{SECRET}@h /d", "whitespace"),
    ("http://h/2 00", "whitespace in the path"),
    ("tcp://127.0.0.1:1,127.0.0.1:2", "takes one host"),
    ("redis://127.0.0.1:0/0", "the port is not a number from 1 to 65535"),
    (f"amqp://u:{SECRET}@127.0.0.1:0/", "the port is not a number from 1 to 65535"),
    (f"mysql://u:{SECRET}@127.0.0.1:0/db", "the port is not a number from 1 to 65535"),
    (f"postgresql://u:{SECRET}@127.0.0.1:0/db", "port"),
    ("tcp://127.0.0.1:0", "the port is not a number from 1 to 65535"),
    ("mongodb://127.0.0.1:0/", "the port is not a number from 1 to 65535"),
    ("http://127.0.0.1:0/", "the port is not a number from 1 to 65535"),
    (f"redis://:{SECRET}@127.0.0.1:1/0?bogus=1", "unknown option 'bogus'"),
    (f"redis://:{SECRET}@127.0.0.1:1/0?ssl_cert_reqs=none", "unknown option 'ssl_cert_reqs'"),
    ("file:///tmp/a%00b", "control character"),
    ("file:///tmp/a%0Ab", "control character"),
    ("file:///" + "x" * 300, "file name too long"),
    # a host with ":" is an IPv6 address or nothing; a $ left unexpanded is no host
    ("tcp://[tcp://127.0.0.1]:80", "bad IPv6 address"),
    ("tcp://[fe80::1%25]:80", "bad IPv6 address"),
    ("tcp://[x]:80", "bad IPv6 address"),
    ("tcp://$RH:80", "$ cannot be in a host name; write ${VAR}"),
    ("tcp://${}:80", "$ cannot be in a host name; write ${VAR}"),
    (f"redis://:{SECRET}@$RH:6379/0", "$ cannot be in a host name"),
    # options the client refuses when built, not when it connects
    (f"rediss://:{SECRET}@127.0.0.1:1/0?ssl_cert_reqs=bogus", "Invalid SSL Certificate"),
    ("redis://127.0.0.1:1/0?protocol=9", "protocol must be either 2 or 3"),
    ("redis://127.0.0.1:1/0?retry=x", "option 'retry' cannot be given in a URL"),
    ("redis://h:1/0?connection_class=x", "option 'connection_class' cannot be given"),
    ("redis://h:1/0?driver_info=x", "option 'driver_info' cannot be given"),
    ("mongodb://h:1/?tls=true&tlsCAFile=/nonexistent", "tlscafile file is not readable"),
    ("mongodb://h:1/?tlsCertificateKeyFile=/nonexistent", "tlscertificatekeyfile"),
    ("mongodb://h:1/?authMechanism=GSSAPI", "GSSAPI requires a username"),
    ("mongodb://h:1/?authMechanism=MONGODB-X509&authSource=foo", "authentication source"),
    ("mongodb+srv://h/?directConnection=true", "directConnection=true"),
    # a socket path the kernel cannot take; file:// taken literally would be a guess
    ("unix:///" + "s" * 120, "a socket path is at most 108 bytes"),
    ("file:///tmp/ready?x", "file:// takes no query or fragment"),
    ("file:///tmp/ready#x", "file:// takes no query or fragment"),
]


@pytest.mark.parametrize(("url", "problem"), BAD_URLS)
def test_a_url_no_retry_can_cure_is_exit_10_at_once(url: str, problem: str) -> None:
    started = time.monotonic()
    result = wait(url, "--timeout", "30")
    assert_config_error(result, problem)
    assert time.monotonic() - started < 10


@pytest.mark.parametrize(
    "url", [f"postgresql://u:{SECRET}@[::1:1/db", f"mysql://u:{SECRET}@127.0.0.1:0/db"]
)
def test_a_bad_database_url_is_exit_10_from_db_too(url: str) -> None:
    assert_config_error(wait("--db", url, "--timeout", "30"), "invalid database URL")


@pytest.mark.parametrize(
    "url",
    [
        f"rediss://:{SECRET}@127.0.0.1:1/0?ssl_cert_reqs=bogus",
        "redis://127.0.0.1:1/0?retry=x",
        "mongodb://h:1/?tls=true&tlsCAFile=/nonexistent",
        "mongodb://h:1/?authMechanism=GSSAPI",
    ],
)
def test_a_url_the_client_refuses_is_one_line_at_debug_level_too(url: str) -> None:
    assert_config_error(wait(url, "--timeout", "30", ENTRYKIT_LOG_LEVEL="debug"), "invalid URL")


def test_a_blank_separated_list_says_commas() -> None:
    for separator in (" ", "\n"):
        urls = separator.join(["tcp://127.0.0.1:1", "tcp://127.0.0.1:2"])
        result = wait("--timeout", "30", ENTRYKIT_WAIT_FOR=urls)
        assert_config_error(result, "separate them with commas")


@pytest.mark.parametrize(
    "args",
    [
        ["--tcp", "tcp://127.0.0.1:80"],
        ["--tcp", "[tcp://127.0.0.1]:80"],
        ["--tcp", "a:b:c:80"],
        ["--tcp", "$RH:80"],
    ],
)
def test_a_tcp_option_that_is_no_host_port_is_exit_10_at_once(args: list[str]) -> None:
    started = time.monotonic()
    assert_config_error(wait(*args, "--timeout", "30"), "is not HOST:PORT")
    assert_config_error(healthcheck(*args), "is not HOST:PORT")
    assert_config_error(wait("--timeout", "30", ENTRYKIT_WAIT_TCP=args[1]), "is not HOST:PORT")
    assert time.monotonic() - started < 15


def test_an_ipv6_zone_id_in_a_url_reaches_the_socket() -> None:
    """``%25lo`` in a URL is the zone ``%lo``: connecting to fe80::1 on lo fails at once
    (no such address), not with a name lookup error for "fe80::1%25lo"."""
    result = wait("tcp://[fe80::1%25lo]:9", "--timeout", "0.5")
    assert result.returncode == 20, result.stderr
    assert "tcp [fe80::1%lo]:9 not ready" in result.stderr
    assert "Name or service not known" not in result.stderr


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u@h1:5432,h2:5433/db",
        "mongodb://a:27017,b:27017/?replicaSet=rs",
        "postgresql:///db?host=/var/run/postgresql",
        "postgresql://%2Fvar%2Frun%2Fpostgresql/db",
        "mysql://u@/db?unix_socket=/run/mysqld.sock",
        "http://[::1]:8080/x",
        "http://bücher.example/",
        "file:///tmp/a b",
        "redis://:p%20w@h:6379/0",
        "tcp://[fe80::1%25eth0]:80",
        "tcp://[::ffff:127.0.0.1]:80",
    ],
)
def test_good_urls_pass_the_form_check(url: str) -> None:
    several = url.startswith(("postgresql", "mongodb"))
    check_url_form(url, several_hosts=several, local_path=url.startswith("file"))


def test_a_file_stat_cannot_see_yet_is_waited_for(tmp_path: Path) -> None:
    """Permission denied or not a directory (here: a file where a folder should be): the
    path may still appear (a volume another container prepares), so it is retried."""
    (tmp_path / "volume").write_text("not yet a folder")
    result = wait(f"file://{tmp_path}/volume/ready", "--timeout", "0.5")
    assert result.returncode == 20, result.stderr
    assert f"{tmp_path}/volume/ready: not a directory" in result.stderr


# -- options named as typed ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--timeout", "-1"], "--timeout (option): expected a finite number"),
        (["--timeout", "abc"], "--timeout (option): expected a number of seconds"),
        (["--tcp", "h"], "--tcp (option): 'h' is not HOST:PORT"),
        (["--http", "ftp://x"], "--http (option): 'ftp://x' is not an http"),
        (["--db", f"redis://:{SECRET}@h/0"], "--db (option): expected a URL starting with"),
    ],
)
def test_errors_name_the_option_as_typed(args: list[str], named: str) -> None:
    result = wait(*args)
    assert_config_error(result, named)
    assert "--wait-" not in result.stderr and "--database-url" not in result.stderr


# -- ${VAR} in --db, --tcp, --http -----------------------------------------------------------


def test_variables_in_options_are_expanded_after_the_secrets(
    tmp_path: Path, listening: tuple[int, int], postgres_server: PostgresServer
) -> None:
    role = f"expanded_{uuid.uuid4().hex[:8]}"
    postgres_server.create_role(role, SECRET)
    (tmp_path / "pg_password").write_text(SECRET)
    port, _ = listening
    result = wait(
        "--db",
        f"postgresql://{role}:${{PG_PASSWORD}}@127.0.0.1:{postgres_server.port}/postgres",
        "--tcp",
        "${TCP_HOST}:${TCP_PORT}",
        "--http",
        "${HEALTH_URL}",
        "--timeout",
        "10",
        ENTRYKIT_SECRETS_DIR=str(tmp_path),
        ENTRYKIT_SECRETS="PG_PASSWORD=pg_password",
        TCP_HOST="127.0.0.1",
        TCP_PORT=str(port),
        HEALTH_URL=f"http://127.0.0.1:{port}/",  # accepts, never answers: not needed ready
    )
    # the HTTP check cannot pass (no answer): the others must have been expanded and be ready
    assert result.returncode == 20, result.stderr
    assert f"database 127.0.0.1:{postgres_server.port} ready" in result.stderr
    assert f"tcp 127.0.0.1:{port} ready" in result.stderr
    assert f"http http://127.0.0.1:{port}/ not ready" in result.stderr
    assert SECRET not in result.stderr


def test_an_unset_variable_in_an_option_is_exit_10() -> None:
    result = wait("--db", "postgresql://u:${NOT_SET_ANYWHERE}@h/db")
    assert_config_error(result, "variable NOT_SET_ANYWHERE is not set")


# -- what a server sent, in log lines --------------------------------------------------------


def _garbage_server() -> tuple[socket.socket, int]:
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"\x00\xff \x1b[31m garbage\r\n" * 3)

    threading.Thread(target=serve, daemon=True).start()
    return server, server.getsockname()[1]


def test_control_bytes_from_a_server_are_escaped_in_log_lines() -> None:
    server, port = _garbage_server()
    try:
        result = wait(f"http://127.0.0.1:{port}/", "--timeout", "0.5")
    finally:
        server.close()
    assert result.returncode == 20, result.stderr
    assert "\\x00" in result.stderr and "\\x1b" in result.stderr
    for line in result.stderr.splitlines():
        assert line.isprintable(), repr(line)
        assert line[:4].isdigit(), repr(line)  # every line is a whole log line


def test_control_bytes_are_escaped_in_the_healthcheck_line() -> None:
    server, port = _garbage_server()
    try:
        result = healthcheck(f"http://127.0.0.1:{port}/")
    finally:
        server.close()
    assert result.returncode == 1, result.stdout
    assert "\\x00" in result.stdout and len(result.stdout.splitlines()) == 1
    assert result.stdout.rstrip("\n").isprintable(), repr(result.stdout)


def test_printable_escapes_only_what_needs_it() -> None:
    assert printable("plain é € text") == "plain é € text"
    assert printable("a\x00b\r\nc\x7f") == "a\\x00b\\r\\nc\\x7f"
    assert str(NotReadyYet("x\ny")) == "x\\ny"


def test_not_ready_after_one_try_says_try() -> None:
    result = wait(f"tcp://127.0.0.1:{closed_port()}", "--timeout", "0")
    assert result.returncode == 20, result.stderr
    assert "(1 try)" in result.stderr and "(1 tries)" not in result.stderr


def test_a_refused_wait_url_is_named_by_its_kind(postgres_server: PostgresServer) -> None:
    url = postgres_server.url(password="wrong-" + SECRET)
    result = wait(url, "--timeout", "10")
    assert result.returncode == 21, result.stderr
    assert f"postgresql 127.0.0.1:{postgres_server.port} refused" in result.stderr
    assert "database 127.0.0.1" not in result.stderr


# -- a PostgreSQL try within the deadline ----------------------------------------------------


def test_postgres_try_ends_at_the_deadline_against_a_silent_server() -> None:
    """libpq's connect timeout is 2 s at least; the try must still end at a 0.5 s deadline."""
    silent = socket.create_server(("127.0.0.1", 0))  # accepts (backlog), never answers
    port = silent.getsockname()[1]
    try:
        started = time.monotonic()
        result = wait(f"postgresql://u:{SECRET}@127.0.0.1:{port}/db", "--timeout", "0.5")
        took = time.monotonic() - started
    finally:
        silent.close()
    assert result.returncode == 20, result.stderr
    assert "timed out" in result.stderr
    assert took < 1.9, took  # a process start (~0.3 s) + 0.5 s, never libpq's 2 s


# -- Basic auth from an http URL -------------------------------------------------------------


class _BasicAuth(http.server.BaseHTTPRequestHandler):
    expected = "Basic " + base64.b64encode(f"user:{SECRET}@é".encode()).decode()

    def do_GET(self) -> None:
        ok = self.headers.get("Authorization") == self.expected
        self.send_response(200 if ok else 401)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def basic_auth_server() -> Iterator[int]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _BasicAuth)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield int(httpd.server_address[1])
    httpd.shutdown()


def test_credentials_in_an_http_url_are_sent_as_basic_auth(basic_auth_server: int) -> None:
    url = f"http://user:{SECRET}%40%C3%A9@127.0.0.1:{basic_auth_server}/"
    result = wait(url, "--timeout", "10")
    assert result.returncode == 0, result.stderr
    assert "http://user:***@127.0.0.1" in result.stderr and SECRET not in result.stderr
    result = wait(f"http://127.0.0.1:{basic_auth_server}/", "--timeout", "0.3")
    assert result.returncode == 20 and "HTTP 401" in result.stderr
    checked = healthcheck(url)
    assert checked.returncode == 0 and SECRET not in checked.stdout, checked.stdout


# -- healthcheck -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["http://h:abc/"], "the port is not a number"),
        (["http://[::1:1/"], "bad IPv6 address"),
        ([f"http://{LONG_LABEL}.example/"], "not a DNS name"),
        (["--tcp", "..:80"], "not a DNS name"),
        (["--tcp", "127.0.0.1:1,127.0.0.1:2"], "whitespace or a comma"),
        (["--file", "/tmp/x", "--max-age", "abc"], "--max-age 'abc': expected a number"),
        (["--file", "/tmp/x", "--max-age", "0"], "--max-age 0: expected a number"),
        (["--timeout", "abc"], "--timeout 'abc': expected a number"),
        (["--timeout", "-1"], "--timeout -1: expected a number"),
        (["--file", "/tmp/x", "--max-age", "soon"], "--max-age 'soon': expected a number"),
        (["--tcp", "127.0.0.1:1", "--max-age", "5"], "--max-age is for --file"),
        (["http://127.0.0.1:1/", "--max-age", "5"], "--max-age is for --file"),
        (["http://x/", "--tcp", "h:1"], "give one of URL, --tcp and --file"),
        (["http://x/", "--file", "/tmp/x"], "give one of URL, --tcp and --file"),
    ],
)
def test_healthcheck_bad_input_is_exit_10_in_one_line(args: list[str], said: str) -> None:
    assert_config_error(healthcheck(*args), said)


def test_a_heartbeat_from_the_future_is_unhealthy(tmp_path: Path) -> None:
    beat = tmp_path / "heartbeat"
    beat.touch()
    soon = time.time() + 2  # a clock a little ahead: still healthy
    os.utime(beat, (soon, soon))
    result = healthcheck("--file", str(beat))
    assert result.returncode == 0, result.stdout
    later = time.time() + 86400  # touch -d '+1 day': would be "recent" for a day
    os.utime(beat, (later, later))
    result = healthcheck("--file", str(beat))
    assert result.returncode == 1, result.stdout
    assert "modified in the future" in result.stdout
    assert len(result.stdout.splitlines()) == 1
