"""Waiting for a TCP port: ready when a connection opens (what wait-for-it checks)."""

from __future__ import annotations

import socket
import threading
import time

from entrykit.settings import split_host_port
from entrykit.waits.retry import Clock, NotReadyYet, Sleep, retry_until_ready


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
