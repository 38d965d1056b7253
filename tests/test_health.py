"""`entrykit healthcheck` against real HTTP servers and ports (INTERFACE §8)."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from entrykit_process import clean_env, run_entrykit


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status = {"/healthz": 200, "/moved": 302, "/broken": 500}.get(self.path, 404)
        self.send_response(status)
        if status == 302:
            self.send_header("Location", "/elsewhere")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[int]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield int(httpd.server_address[1])
    httpd.shutdown()


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return clean_env(tmp_path)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_default_url_uses_port(server: int, env: dict[str, str]) -> None:
    result = run_entrykit(["healthcheck"], {**env, "PORT": str(server)})
    assert result.returncode == 0
    assert result.stdout.startswith(f"healthy: http://127.0.0.1:{server}/healthz answered 200")
    assert len(result.stdout.splitlines()) == 1


@pytest.mark.parametrize(
    ("path", "code"), [("/healthz", 0), ("/moved", 0), ("/broken", 1), ("/nope", 1)]
)
def test_status_codes(server: int, env: dict[str, str], path: str, code: int) -> None:
    result = run_entrykit(["healthcheck", f"http://127.0.0.1:{server}{path}"], env)
    assert result.returncode == code, result.stdout
    assert len(result.stdout.splitlines()) == 1


def test_refused_is_unhealthy(env: dict[str, str]) -> None:
    result = run_entrykit(["healthcheck", f"http://127.0.0.1:{_closed_port()}/healthz"], env)
    assert result.returncode == 1
    assert "unhealthy" in result.stdout and "refused" in result.stdout


def test_silent_server_times_out(env: dict[str, str]) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        result = run_entrykit(["healthcheck", f"http://127.0.0.1:{port}/", "--timeout", "0.5"], env)
    assert result.returncode == 1
    assert "timed out" in result.stdout


def test_tcp(server: int, env: dict[str, str]) -> None:
    assert run_entrykit(["healthcheck", "--tcp", f"127.0.0.1:{server}"], env).returncode == 0
    assert (
        run_entrykit(["healthcheck", "--tcp", f"127.0.0.1:{_closed_port()}"], env).returncode == 1
    )


def test_bad_url_is_a_config_error(env: dict[str, str]) -> None:
    result = run_entrykit(["healthcheck", "ftp://x/"], env)
    assert result.returncode == 10


def test_sigterm_while_checking_exits_143(env: dict[str, str]) -> None:
    """Stop handlers are installed first thing, so even a health check stops as 128+N."""
    import signal
    import subprocess
    import time

    from entrykit_process import ENTRYKIT

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        process = subprocess.Popen(
            [*ENTRYKIT, "healthcheck", f"http://127.0.0.1:{port}/", "--timeout", "30"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        connection, _ = listener.accept()  # it connected; no answer will come
        with connection:
            time.sleep(0.2)
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=5) == 143
