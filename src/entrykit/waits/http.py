"""Waiting for an HTTP(S) URL: ready on a 2xx or 3xx answer."""

from __future__ import annotations

import threading
import time
from http.client import HTTPException

from entrykit.logs import mask_url
from entrykit.waits.check import Check, wait_until_ready
from entrykit.waits.retry import Clock, NotReadyYet, Sleep


def http_check(url: str) -> Check:
    """A GET of ``url`` (redirects not followed); raises ConfigError unless http(s)."""
    from entrykit.health import check_url, failure_reason, http_status, is_healthy

    check_url(url)
    shown = f"http {mask_url(url)}"

    def attempt(timeout: float) -> None:
        try:
            status = http_status(url, timeout)
        except (OSError, HTTPException) as error:
            raise NotReadyYet(failure_reason(error)) from None
        if not is_healthy(status):
            raise NotReadyYet(f"HTTP {status}")

    return Check(shown, shown, attempt)


def wait_for_http(
    url: str,
    deadline: float,
    *,
    clock: Clock = time.monotonic,
    sleep: Sleep | None = None,
    cancel: threading.Event | None = None,
) -> None:
    """Wait until ``url`` answers a GET with 2xx or 3xx (redirects are not followed).

    Raises ConfigError, DependencyNotReady, Cancelled.
    """
    wait_until_ready(http_check(url), deadline, clock=clock, sleep=sleep, cancel=cancel)
