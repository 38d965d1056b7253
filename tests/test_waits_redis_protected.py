"""A Redis in protected mode (no password, reached on an address other than loopback) sends
``-DENIED ...`` and closes: no wait can cure it, so it is exit 21 at once with its text, not
a broken pipe retried to the deadline. Against a real ``redis-server`` bound to a
non-loopback address of this machine."""

from __future__ import annotations

import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator

import pytest
from entrykit_process import clean_env, run_entrykit
from servers import which

pytestmark = pytest.mark.skipif(which("redis-server") is None, reason="redis-server not installed")


def _own_address() -> str | None:
    """An IPv4 address of this machine other than loopback (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # a route is chosen, nothing is sent
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") or address == "0.0.0.0" else address


@pytest.fixture
def protected_redis() -> Iterator[tuple[str, int]]:
    address = _own_address()
    if address is None:
        pytest.skip("this machine has no address other than loopback")
    with socket.socket() as sock:
        sock.bind((address, 0))
        port = int(sock.getsockname()[1])
    with tempfile.TemporaryDirectory(prefix="ekredis-protected-") as folder:
        options = ["--port", str(port), "--bind", address, "--protected-mode", "yes"]
        options += ["--save", "", "--appendonly", "no", "--dir", folder]
        server = subprocess.Popen(
            [which("redis-server") or "redis-server", *options],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    socket.create_connection((address, port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.05)
            yield address, port
        finally:
            server.terminate()
            server.wait(30)


def test_protected_mode_is_refused_at_once_with_its_text(
    protected_redis: tuple[str, int],
) -> None:
    address, port = protected_redis
    started = time.monotonic()
    result = run_entrykit(
        ["wait", f"redis://{address}:{port}/0", "--timeout", "10"], clean_env(), timeout=30
    )
    assert result.returncode == 21, result.stderr
    assert time.monotonic() - started < 5
    assert "DENIED Redis is running in protected mode" in result.stderr
    assert "Broken pipe" not in result.stderr and "reset" not in result.stderr


def test_a_server_that_closes_without_a_word_is_still_waited_for() -> None:
    """The DENIED probe must not turn an ordinary dropped connection into a refusal."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = int(listener.getsockname()[1])

    def drop() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            client.close()

    threading.Thread(target=drop, daemon=True).start()
    try:
        result = run_entrykit(
            ["wait", f"redis://127.0.0.1:{port}/0", "--timeout", "1"], clean_env(), timeout=30
        )
    finally:
        listener.close()
    assert result.returncode == 20, result.stderr
