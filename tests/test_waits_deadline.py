"""The wait's deadline holds whatever a server does: real sockets that trickle one byte every
half second (each read is quick, the try never ends) must not hold a wait, a run or a
healthcheck past its timeout; and the clock starts before the checks are prepared."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest
from entrykit_process import clean_env, run_entrykit

from entrykit.errors import DependencyNotReady
from entrykit.waits.check import Check
from entrykit.waits.retry import DEADLINE_GRACE
from entrykit.waits.run import wait_side_by_side

HTTP_START = b"HTTP/1.1 200 OK\r\nX-Slow: "
REDIS_START = b"+PONG"
# py-amqp reads the broker's Connection.Start frame: a frame header, then a byte at a time
AMQP_START = b"\x01\x00\x00\x00\x00\x01\x00"


class TrickleServer:
    """Accepts, sends ``start``, then one byte every half second until the client leaves."""

    def __init__(self, start: bytes) -> None:
        self.start = start
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._trickle, args=(client,), daemon=True).start()

    def _trickle(self, client: socket.socket) -> None:
        with client:
            try:
                client.settimeout(0.2)
                with contextlib.suppress(TimeoutError):
                    client.recv(65536)  # the request, if the client speaks first
                client.sendall(self.start)
                while True:
                    client.sendall(b"a")
                    time.sleep(0.5)
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def trickling() -> Iterator[type[TrickleServer]]:
    servers: list[TrickleServer] = []

    def make(start: bytes) -> TrickleServer:
        server = TrickleServer(start)
        servers.append(server)
        return server

    yield make  # type: ignore[misc]
    for server in servers:
        server.close()


def timed(args: list[str], **env: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = run_entrykit(args, clean_env(**env), timeout=30)
    return result, time.monotonic() - started


# a Python start costs up to a second on a loaded machine
SLACK = DEADLINE_GRACE + 1.5


@pytest.mark.parametrize(
    ("start", "scheme"),
    [(HTTP_START, "http"), (REDIS_START, "redis"), (AMQP_START, "amqp")],
)
def test_a_trickling_server_does_not_hold_the_wait_past_its_deadline(
    trickling: type[TrickleServer], start: bytes, scheme: str
) -> None:
    server = trickling(start)
    url = f"{scheme}://127.0.0.1:{server.port}/"
    result, seconds = timed(["wait", url, "--timeout", "3"])
    assert result.returncode == 20, result.stderr
    assert seconds < 3 + SLACK, result.stderr
    assert server.connections >= 1  # it was really tried
    assert "not ready after" in result.stderr


def test_side_by_side_waits_end_at_the_deadline(trickling: type[TrickleServer]) -> None:
    http = trickling(HTTP_START)
    redis = trickling(REDIS_START)
    urls = f"http://127.0.0.1:{http.port}/,redis://127.0.0.1:{redis.port}/0"
    result, seconds = timed(["wait", *urls.split(","), "--timeout", "2"])
    assert result.returncode == 20, result.stderr
    assert seconds < 2 + SLACK, result.stderr


def test_run_with_a_trickling_wait_http_ends_at_the_deadline(
    trickling: type[TrickleServer],
) -> None:
    server = trickling(HTTP_START)
    result, seconds = timed(
        ["run", "--", "echo", "x"],
        ENTRYKIT_WAIT_HTTP=f"http://127.0.0.1:{server.port}/",
        ENTRYKIT_WAIT_TIMEOUT="2",
    )
    assert result.returncode == 20, result.stderr
    assert "x" not in result.stdout.split()
    assert seconds < 2 + SLACK, result.stderr


@pytest.mark.parametrize("target", ["url", "tcp"])
def test_healthcheck_timeout_bounds_the_whole_check(
    trickling: type[TrickleServer], target: str
) -> None:
    server = trickling(HTTP_START)
    args = (
        [f"http://127.0.0.1:{server.port}/"]
        if target == "url"
        else ["--tcp", f"127.0.0.1:{server.port}"]
    )
    result, seconds = timed(["healthcheck", *args, "--timeout", "2"])
    if target == "tcp":  # a connection opens: healthy at once
        assert result.returncode == 0, result.stdout + result.stderr
        return
    assert result.returncode == 1, result.stdout + result.stderr
    assert "timed out" in result.stdout
    assert seconds < 2 + 1.5


def test_a_try_that_never_returns_is_given_up_at_the_deadline() -> None:
    """A try stuck for ever (a client blocked in C) cannot hold the side-by-side wait past
    its deadline and grace; it is named as not ready, the ready one is not."""
    release = threading.Event()

    def stuck(timeout: float) -> None:
        release.wait()

    def ready(timeout: float) -> None:
        return None

    checks = [Check("stuck one", "stuck one", stuck), Check("fine", "fine", ready)]
    started = time.monotonic()
    try:
        with pytest.raises(DependencyNotReady, match="stuck one not ready") as raised:
            wait_side_by_side(checks, time.monotonic() + 1)
    finally:
        release.set()
    assert time.monotonic() - started < 1 + DEADLINE_GRACE + 0.5
    assert "fine" not in str(raised.value)


def test_the_clock_starts_before_the_checks_are_prepared() -> None:
    """Preparing 200 Redis checks (redis-py builds a connection for each URL) takes a while:
    the deadline is read before, so that time counts against it; every dependency still
    gets a real try (a refused connection, not a try given up)."""
    from entrykit.settings import Settings
    from entrykit.waits.run import wait_for_dependencies

    closed = socket.create_server(("127.0.0.1", 0))
    port = int(closed.getsockname()[1])
    closed.close()  # nothing listens: every try is refused at once
    urls = [f"redis://127.0.0.1:{port}/{db}" for db in range(200)]
    settings = Settings.load(options={"wait_for": urls, "wait_timeout": 1.0}, environ={})
    readings: list[float] = []

    def clock() -> float:
        readings.append(time.monotonic())
        return readings[-1]

    started = time.monotonic()
    with pytest.raises(DependencyNotReady) as caught:
        wait_for_dependencies(settings, clock=clock)
    assert readings[0] - started < 0.05  # the deadline: read before the checks were built
    text = str(caught.value)
    assert text.count("not ready") == 200
    assert text.count("Connection refused") >= 180, text
