"""ENTRYKIT_WAIT_FOR and ``entrykit wait URL...``: the scheme table, side by side under one
deadline, ``${VAR}`` from secrets, a missing client before any waiting, file:// and unix://,
and imports that stay lazy. Real processes, sockets and files throughout."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from postgres_fixtures import PostgresServer, free_port
from servers import MariaDBServer, RabbitMQServer, RedisServer
from test_wait import ENTRYKIT, deadline_in, entrykit, later

from entrykit.errors import Cancelled, ConfigError, DatabaseRefused, DependencyNotReady
from entrykit.settings import Settings
from entrykit.waits.check import wait_until_ready
from entrykit.waits.run import dependency_checks, wait_for_dependencies, wait_side_by_side
from entrykit.waits.schemes import CHECKS, check_for_url
from entrykit.waits.urls import expand_url

needs_redis = pytest.mark.skipif(not RedisServer.available(), reason="redis-server not installed")


def settings_for(*urls: str, timeout: float = 30, **environ: str) -> Settings:
    return Settings.load(
        options={"wait_for": list(urls), "wait_timeout": timeout}, environ=dict(environ)
    )


# -- the scheme table ------------------------------------------------------------------------


def test_every_contract_scheme_has_a_check() -> None:
    for scheme in (
        "redis",
        "rediss",
        "valkey",
        "valkeys",
        "amqp",
        "amqps",
        "mongodb",
        "mongodb+srv",
        "tcp",
        "http",
        "https",
        "file",
        "unix",
    ):
        assert scheme in CHECKS
    for url in (
        "postgresql://u@h/db",
        "postgres://u@h/db",
        "postgresql+asyncpg://u@h/db",
        "mysql://u@h/db",
        "mariadb://u@h/db",
        "mysql+aiomysql://u@h/db",
    ):
        assert check_for_url(url) is not None


@pytest.mark.parametrize("url", ["kafka://broker:9092", "REDIS-X://h/0", "localhost:6379"])
def test_unknown_scheme_is_a_config_error_naming_it(url: str) -> None:
    with pytest.raises(ConfigError, match=r"unknown scheme|no scheme") as caught:
        check_for_url(url)
    if "://" in url:
        assert url.split("://")[0].lower() in str(caught.value)


def test_cli_unknown_scheme_exits_10() -> None:
    result = entrykit("wait", "kafka://u:secret-pw@broker:9092", "--timeout", "30")
    assert result.returncode == 10, result.stderr
    assert "kafka://" in result.stderr and "secret-pw" not in result.stderr


# -- ${VAR} ----------------------------------------------------------------------------------


def test_variables_are_percent_encoded_in_the_userinfo_only() -> None:
    environ = {"PW": "p@ss/w#rd:x", "HOST": "redis", "DB": "2"}
    assert (
        expand_url("redis://:${PW}@${HOST}:6379/${DB}", environ)
        == "redis://:p%40ss%2Fw%23rd%3Ax@redis:6379/2"
    )
    assert expand_url("amqp://${HOST}//", environ) == "amqp://redis//"
    assert expand_url("redis://u:${PW}@h/?x=${DB}", environ).endswith("@h/?x=2")


def test_unset_variable_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="variable REDIS_PASSWORD is not set"):
        dependency_checks(settings_for("redis://:${REDIS_PASSWORD}@redis:6379/0"))


@needs_redis
@pytest.mark.slow
def test_password_from_a_secret_file_with_reserved_characters(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    (tmp_path / "redis_password").write_text(redis_server.password + "\n")
    url = f"redis://:${{REDIS_PASSWORD}}@127.0.0.1:{redis_server.port}/0"
    env = {
        "ENTRYKIT_SECRETS_DIR": str(tmp_path),
        "ENTRYKIT_SECRETS": "REDIS_PASSWORD=redis_password",
        "ENTRYKIT_WAIT_FOR": url,
        "ENTRYKIT_LOG_LEVEL": "debug",
    }
    result = entrykit("run", "--", sys.executable, "-c", "print('app')", env=env)
    assert result.returncode == 0, result.stderr
    assert "app" in result.stdout
    assert f"redis 127.0.0.1:{redis_server.port} ready after" in result.stderr
    assert redis_server.password not in result.stderr
    result = entrykit("wait", url, env={**env, "ENTRYKIT_WAIT_FOR": ""})
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_cli_unset_variable_exits_10() -> None:
    result = entrykit("wait", "redis://:${NOT_SET_ANYWHERE}@127.0.0.1:1/0")
    assert result.returncode == 10, result.stderr
    assert "NOT_SET_ANYWHERE" in result.stderr


# -- a missing client: exit 10 naming the extra, before any waiting --------------------------

_BLOCKED = """
import sys
for name in sys.argv[1].split(","):
    sys.modules[name] = None  # what an image without the extra has: import fails
from entrykit.cli import main
main(sys.argv[2:])
"""


@pytest.mark.parametrize(
    ("module", "extra", "url"),
    [
        ("redis", "redis", "redis://:pw@127.0.0.1:1/0"),
        ("amqp", "rabbitmq", "amqp://u:pw@127.0.0.1:1//"),
        ("pymongo", "mongodb", "mongodb://127.0.0.1:1/"),
        ("pymysql", "mysql", "mysql://u:pw@127.0.0.1:1/db"),
    ],
)
def test_missing_client_exits_10_naming_the_extra_before_waiting(
    module: str, extra: str, url: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENTRYKIT_")}
    started = time.monotonic()
    # a TCP dependency that is never ready comes first: nothing may be waited on
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            _BLOCKED,
            module,
            "wait",
            f"tcp://127.0.0.1:{free_port()}",
            url,
            "--timeout",
            "30",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 10, result.stderr
    assert f"pip install 'entrykit[{extra}]'" in result.stderr
    assert "waiting for" not in result.stderr
    assert time.monotonic() - started < 15


def test_missing_mysql_client_for_database_url() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENTRYKIT_")}
    env["DATABASE_URL"] = "mysql://u:pw@127.0.0.1:1/db"
    result = subprocess.run(
        [sys.executable, "-c", _BLOCKED, "pymysql", "run", "--", "true"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 10, result.stderr
    assert "entrykit[mysql]" in result.stderr


# -- lazy imports ----------------------------------------------------------------------------


def _imported(*args: str, env: dict[str, str] | None = None) -> set[str]:
    """The protocol clients (and tenacity, psycopg) that ``entrykit ARGS`` imports."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("ENTRYKIT_")}
    full.pop("DATABASE_URL", None)
    full.update(env or {})
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "entrykit", *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    top_level = {
        line.rsplit("|", 1)[1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:")
    }
    return top_level & {"redis", "pymysql", "amqp", "pymongo", "tenacity", "psycopg"}


def test_run_true_imports_no_client() -> None:
    assert _imported("run", "--", "true") == set()


def test_wait_for_tcp_imports_no_protocol_client() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        port = listener.getsockname()[1]
        env = {"ENTRYKIT_WAIT_FOR": f"tcp://127.0.0.1:{port}"}
        assert _imported("run", "--", "true", env=env) == {"tenacity"}
    finally:
        listener.close()


# -- side by side under one deadline ---------------------------------------------------------


def test_dependencies_are_waited_on_side_by_side() -> None:
    closed = [f"tcp://127.0.0.1:{free_port()}" for _ in range(3)]
    started = time.monotonic()
    with pytest.raises(DependencyNotReady) as caught:
        wait_for_dependencies(settings_for(*closed, timeout=1.5))
    assert time.monotonic() - started < 2.5  # not 1.5 s each
    for url in closed:  # every one that was not ready is named
        assert url.removeprefix("tcp://") in str(caught.value)


def test_all_ready_at_different_times(tmp_path: Path) -> None:
    port = free_port()
    flag = tmp_path / "ready.flag"
    holder: list[socket.socket] = []
    later(0.5, lambda: holder.append(socket.create_server(("127.0.0.1", port))))
    later(1.0, flag.touch)
    started = time.monotonic()
    wait_for_dependencies(settings_for(f"tcp://127.0.0.1:{port}", f"file://{flag}"))
    assert 0.9 < time.monotonic() - started < 2.0  # the slower one, not the sum
    holder[0].close()


@needs_redis
def test_a_refusal_stops_the_other_waits_at_once(redis_server: RedisServer) -> None:
    never = f"tcp://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(DatabaseRefused):
        wait_for_dependencies(settings_for(never, redis_server.url(password="wrong-pw")))
    assert time.monotonic() - started < 3


def test_cancel_stops_every_wait_within_a_second() -> None:
    cancel = threading.Event()
    checks = [check_for_url(f"tcp://127.0.0.1:{free_port()}") for _ in range(2)]
    later(0.3, cancel.set)
    started = time.monotonic()
    with pytest.raises(Cancelled):
        wait_side_by_side([c for c in checks if c], deadline_in(30), cancel=cancel)
    assert time.monotonic() - started < 1.0


# -- file:// and unix:// ---------------------------------------------------------------------


def test_file_that_appears_later(tmp_path: Path) -> None:
    path = tmp_path / "migrated"
    later(0.5, path.touch)
    check = check_for_url(f"file://{path}")
    assert check is not None
    wait_until_ready(check, deadline_in(5))
    with pytest.raises(DependencyNotReady, match="does not exist"):
        wait_until_ready(check_for_url(f"file://{tmp_path}/never") or check, deadline_in(0.3))


def test_unix_socket_that_starts_listening_later(tmp_path: Path) -> None:
    path = tmp_path / "app.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))  # the file exists, nothing listens yet: still not ready
    check = check_for_url(f"unix://{path}")
    assert check is not None
    with pytest.raises(DependencyNotReady, match="refused"):
        wait_until_ready(check, deadline_in(0.3))
    later(0.5, lambda: server.listen(1))
    try:
        wait_until_ready(check, deadline_in(5))
    finally:
        server.close()


@pytest.mark.parametrize("url", ["file://host/etc/passwd", "file:relative", "unix://relative.sock"])
def test_file_and_unix_urls_need_an_absolute_local_path(url: str) -> None:
    with pytest.raises(ConfigError):
        check_for_url(url)


def test_cli_file_ready_and_not(tmp_path: Path) -> None:
    (tmp_path / "here").touch()
    assert entrykit("wait", f"file://{tmp_path}/here").returncode == 0
    result = entrykit("wait", f"file://{tmp_path}/absent", "--timeout", "0.5")
    assert result.returncode == 20, result.stderr
    assert ENTRYKIT  # the same interpreter as every CLI test


# -- the whole stack -------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(
    not (RedisServer.available() and MariaDBServer.available() and RabbitMQServer.available()),
    reason="needs redis-server, mariadb-server and rabbitmq-server",
)
def test_run_waits_for_the_whole_stack_side_by_side(
    postgres_server: PostgresServer, rabbitmq_server: RabbitMQServer, tmp_path: Path
) -> None:
    """PostgreSQL and RabbitMQ up, Redis and MariaDB started late at different times: `run`
    waits for all of them at once, then execs the command."""
    redis = RedisServer()
    mariadb = MariaDBServer()
    try:
        later(1.0, lambda: redis.start(wait=False))
        later(2.0, lambda: mariadb.start(wait=False))
        (tmp_path / "rabbitmq_password").write_text(rabbitmq_server.password)
        amqp_url = rabbitmq_server.url(password="").replace("@", ":${RABBITMQ_PASSWORD}@", 1)
        env = {
            "DATABASE_URL": postgres_server.url(),
            "ENTRYKIT_SECRETS_DIR": str(tmp_path),
            "ENTRYKIT_SECRETS": "RABBITMQ_PASSWORD=rabbitmq_password",
            "ENTRYKIT_WAIT_FOR": ",".join([redis.url(), mariadb.url(), amqp_url]),
            "ENTRYKIT_WAIT_TIMEOUT": "90",
        }
        result = entrykit("run", "--", sys.executable, "-c", "print('app')", env=env)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "app"
        lines = {}
        for ready in (
            f"database 127.0.0.1:{postgres_server.port} ready after",
            f"redis 127.0.0.1:{redis.port} ready after",
            f"mysql 127.0.0.1:{mariadb.port} ready after",
            f"amqp 127.0.0.1:{rabbitmq_server.port} ready after",
        ):
            assert ready in result.stderr, result.stderr
            lines[ready.split()[0]] = result.stderr.index(ready)
        # side by side: RabbitMQ, listed last, is ready long before MariaDB, started late
        assert lines["amqp"] < lines["mysql"], result.stderr
        for password in (redis.password, mariadb.password, rabbitmq_server.password):
            assert password not in result.stderr
    finally:
        redis.close()
        mariadb.close()


@pytest.mark.slow
def test_sigterm_stops_side_by_side_waits_within_a_second() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENTRYKIT_")}
    closed = [f"tcp://127.0.0.1:{free_port()}" for _ in range(3)]
    process = subprocess.Popen(
        [*ENTRYKIT, "wait", *closed, "--timeout", "60"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    for line in process.stderr:  # every wait has started
        if "waiting for" in line and closed[-1].removeprefix("tcp://") in line:
            break
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 143
    assert time.monotonic() - sent < 1.0


@pytest.mark.parametrize(
    "scheme",
    [
        "redis://:pw@{}/0",
        "amqp://u:pw@{}/v",
        "mysql://u:pw@{}/db",
        "http://{}/",
        "postgresql://u:pw@{}/db",
    ],
)
def test_server_that_accepts_but_never_answers_times_out(scheme: str) -> None:
    """Each try is bounded by the time left: a silent server cannot hold the wait past its
    deadline (the kernel accepts the connection, nothing ever answers)."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    try:
        url = scheme.format(f"127.0.0.1:{listener.getsockname()[1]}")
        started = time.monotonic()
        with pytest.raises(DependencyNotReady) as caught:
            wait_for_dependencies(settings_for(url, timeout=1.5))
        assert time.monotonic() - started < 4.5  # libpq's shortest connect timeout is 2 s
        assert ":pw@" not in str(caught.value)
    finally:
        listener.close()
