"""`entrykit healthcheck` against real HTTP servers and ports (docs/reference.md, docs/waiting.md)."""

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


# -- bad input: exit 10, one line, never a traceback ------------------------------------------


@pytest.mark.parametrize(
    ("args", "extra"),
    [
        (["healthcheck"], {"PORT": "abc"}),
        (["healthcheck"], {"PORT": "99999"}),
        (["healthcheck"], {"PORT": "0"}),
        (["healthcheck", "--timeout", "-1"], {}),
        (["healthcheck", "--timeout", "nan"], {}),
        (["healthcheck", "--timeout", "0"], {}),
        (["healthcheck", "--tcp", "127.0.0.1:1", "--timeout", "inf"], {}),
        (["healthcheck", "--file", "/tmp/x", "--max-age", "-5"], {}),
        (["healthcheck", "--file", "/tmp/x", "http://127.0.0.1:1/"], {}),
    ],
)
def test_bad_values_exit_10_in_one_line(
    env: dict[str, str], args: list[str], extra: dict[str, str]
) -> None:
    result = run_entrykit(args, {**env, **extra})
    assert result.returncode == 10, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


# -- --file: a worker's heartbeat ------------------------------------------------------------


def test_heartbeat_file_fresh_old_and_missing(env: dict[str, str], tmp_path: Path) -> None:
    import os
    import time

    beat = tmp_path / "heartbeat"
    beat.touch()
    result = run_entrykit(["healthcheck", "--file", str(beat)], env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"healthy: {beat} modified 0.")
    old = time.time() - 120
    os.utime(beat, (old, old))
    result = run_entrykit(["healthcheck", "--file", str(beat)], env)
    assert result.returncode == 1
    assert "modified 12" in result.stdout and "more than 60 s" in result.stdout
    result = run_entrykit(["healthcheck", "--file", str(beat), "--max-age", "300"], env)
    assert result.returncode == 0, result.stdout
    result = run_entrykit(["healthcheck", "--file", str(tmp_path / "none")], env)
    assert result.returncode == 1
    assert "no such file" in result.stdout
    assert len(result.stdout.splitlines()) == 1


def test_max_age_without_file_is_a_config_error(tmp_path: Path) -> None:
    from entrykit.errors import ConfigError
    from entrykit.health import check_target

    for url, tcp in (("http://127.0.0.1:1/", None), (None, "127.0.0.1:1"), (None, None)):
        with pytest.raises(ConfigError, match="--max-age is for --file"):
            check_target(url, tcp, None, "5", "3", port=None)
    beat = tmp_path / "heartbeat"
    beat.touch()
    old = beat.stat().st_mtime - 61
    import os

    os.utime(beat, (old, old))  # older than the default --max-age of 60 s
    result = check_target(None, None, str(beat), None, "3", port=None)
    assert not result.healthy and "more than 60 s" in result.line
    assert check_target(None, None, str(beat), "300", "3", port=None).healthy


def test_heartbeat_of_a_real_worker_loop(env: dict[str, str], tmp_path: Path) -> None:
    """A worker that touches its file from its loop is healthy; once it hangs, it is not."""
    import subprocess
    import sys
    import time

    beat = tmp_path / "worker-heartbeat"
    worker = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import pathlib, sys, time\n"
            "beat = pathlib.Path(sys.argv[1])\n"
            "while True:\n"
            "    beat.touch()  # one job done\n"
            "    time.sleep(0.2)\n",
            str(beat),
        ]
    )
    try:
        deadline = time.monotonic() + 10
        while not beat.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        check = ["healthcheck", "--file", str(beat), "--max-age", "1.5"]
        assert run_entrykit(check, env).returncode == 0
        worker.send_signal(__import__("signal").SIGSTOP)  # the worker hangs
        time.sleep(2.0)
        result = run_entrykit(check, env)
        assert result.returncode == 1, result.stdout
        assert "more than 1.5 s" in result.stdout
    finally:
        worker.kill()
        worker.wait(10)
