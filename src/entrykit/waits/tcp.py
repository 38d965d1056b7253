"""Waiting for a TCP port: ready when a connection opens (what wait-for-it checks)."""

from __future__ import annotations

import socket
import threading
import time
from urllib.parse import urlsplit

from entrykit.errors import ConfigError
from entrykit.logs import mask_url
from entrykit.waits.check import Check, host_port, wait_until_ready
from entrykit.waits.retry import Clock, NotReadyYet, Sleep
from entrykit.waits.urls import split_address, url_host


def tcp_check(address: str) -> Check:
    """A check of ``HOST:PORT``; raises ConfigError when it is not that form."""
    host, port = split_address(address)

    def attempt(timeout: float) -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError as error:
            raise NotReadyYet(str(error) or type(error).__name__) from None

    return Check(f"tcp {address}", f"tcp {address}", attempt)


def tcp_url_check(url: str) -> Check:
    """A check of ``tcp://HOST:PORT``; raises ConfigError without a host and a port."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise ConfigError(f"invalid URL {mask_url(url)!r}: {error}") from None
    if not parts.hostname or port is None:
        raise ConfigError(f"invalid URL {mask_url(url)!r}: expected tcp://HOST:PORT")
    return tcp_check(host_port(url_host(parts), port))


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
    wait_until_ready(tcp_check(address), deadline, clock=clock, sleep=sleep, cancel=cancel)
