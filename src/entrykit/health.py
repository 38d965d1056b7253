"""The health check Docker runs every few seconds: standard library only, one request.

2xx and 3xx are healthy (redirects are not followed: a redirect already proves the server
answers), anything else, a timeout or a refused connection is not. Workers that serve no
HTTP are healthy while their heartbeat file is recent enough.
"""

from __future__ import annotations

import base64
import http.client
import math
import os
import socket
import time
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from entrykit.errors import ConfigError
from entrykit.logs import mask_url
from entrykit.values import is_port
from entrykit.waits.retry import NotReadyYet, bounded, printable
from entrykit.waits.urls import check_url_form, split_address, url_host

# A heartbeat written by another machine (a shared volume) may be a little ahead of ours.
FUTURE_TOLERANCE = 5.0
DEFAULT_MAX_AGE = "60"  # seconds: --file's heartbeat is healthy while younger than this


@dataclass(frozen=True)
class HealthResult:
    """The verdict and the one line the CLI prints."""

    healthy: bool
    line: str


def check_target(
    url: str | None,
    tcp: str | None,
    path: str | None,
    max_age: str | None,
    timeout: str,
    *,
    port: str | None,
) -> HealthResult:
    """One check, as ``entrykit healthcheck`` gives it: the heartbeat file ``path``, the TCP
    address ``tcp``, else the HTTP ``url`` (default :func:`default_url` of ``port``).

    Raises ConfigError for an empty or bad target, more than one target, ``max_age`` given
    without ``path`` (None: DEFAULT_MAX_AGE), or ``max_age`` or ``timeout`` not seconds
    above 0 (both checked, used or not).
    """
    from entrykit.options import check_not_empty

    check_not_empty({"URL": url, "--tcp": tcp, "--file": path})
    if sum(target is not None for target in (url, tcp, path)) > 1:
        raise ConfigError("healthcheck: give one of URL, --tcp and --file")
    # ignored, it would mislead. (The CLI's default is DEFAULT_MAX_AGE until it passes None
    # for an option not given: that value alone cannot be told from a default.)
    if max_age is not None and path is None:
        raise ConfigError("healthcheck: --max-age is for --file")
    oldest = parse_seconds("--max-age", DEFAULT_MAX_AGE if max_age is None else max_age)
    seconds = parse_seconds("--timeout", timeout)
    if path is not None:
        return check_file(path, oldest)
    if tcp is not None:
        return check_tcp(tcp, seconds)
    return check_http(url if url is not None else default_url(port), seconds)


def default_url(port: str | None) -> str:
    """``http://127.0.0.1:$PORT/healthz``, PORT defaulting to 8000.

    Raises ConfigError when PORT is not a port number (1 to 65535).
    """
    port = (port or "").strip() or "8000"
    if not is_port(port):
        raise ConfigError(f"PORT={port!r} is not a port number (1 to 65535)")
    return f"http://127.0.0.1:{int(port)}/healthz"


def check_seconds(name: str, seconds: float) -> float:
    """``seconds`` when it is a finite number above 0; raises ConfigError naming ``name``."""
    if not (math.isfinite(seconds) and seconds > 0):
        raise ConfigError(f"{name} {seconds:g}: expected a number of seconds above 0")
    return seconds


def parse_seconds(name: str, text: str) -> float:
    """The option ``name``'s value as seconds: a finite number above 0.

    Raises ConfigError naming the option otherwise.
    """
    try:
        seconds = float(text)
    except ValueError:
        raise ConfigError(f"{name} {text!r}: expected a number of seconds above 0") from None
    return check_seconds(name, seconds)


def check_url(url: str) -> None:
    """Raises ConfigError unless ``url`` is an http:// or https:// URL with a host that a
    request can use (see :func:`entrykit.waits.urls.check_url_form`)."""
    check_url_form(url)
    scheme = url.partition("://")[0].lower()
    try:
        host = urlsplit(url).hostname
    except ValueError as error:  # urllib's "Invalid IPv6 URL": a "[" or "]" in the password
        raise ConfigError(f"invalid URL {mask_url(url)!r}: {error}") from None
    if scheme not in ("http", "https") or not host:
        raise ConfigError(f"{mask_url(url)!r} is not an http:// or https:// URL")


def http_status(url: str, timeout: float) -> int:
    """The status of one GET of ``url``, redirects not followed, with Basic auth when the
    URL holds a user (and password).

    Raises ConfigError for a URL that is not http(s), OSError or http.client.HTTPException
    when there is no answer (use :func:`failure_reason` to describe it).
    """
    check_url(url)
    parts = urlsplit(url)
    connection_type = (
        http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    )
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    headers = {"User-Agent": "entrykit"}
    if parts.username is not None:  # http://USER:PASSWORD@HOST/: Basic auth, as curl does
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode()
    # the port given, never left to http.client: it would read one off an IPv6 address
    port = parts.port or (443 if parts.scheme == "https" else 80)
    connection = connection_type(url_host(parts), port, timeout=timeout)
    try:
        connection.request("GET", path, headers=headers)
        return connection.getresponse().status
    finally:
        connection.close()


def is_healthy(status: int) -> bool:
    """2xx and 3xx, as Docker's HEALTHCHECK and readiness probes understand it."""
    return 200 <= status < 400


def check_http(url: str, timeout: float = 3.0) -> HealthResult:
    """One GET of ``url``; raises ConfigError when it is not an http(s) URL or ``timeout``
    is not a number of seconds above 0."""
    check_seconds("--timeout", timeout)
    check_url(url)
    started = time.monotonic()
    statuses: list[int] = []
    try:
        # the whole request within the timeout: a socket timeout bounds each read only
        bounded(timeout, lambda: statuses.append(http_status(url, timeout)))
        status = statuses[0]
    except NotReadyYet as error:
        return HealthResult(False, f"unhealthy: {url}: {error}")
    except (OSError, http.client.HTTPException) as error:
        return HealthResult(False, f"unhealthy: {url}: {failure_reason(error)}")
    millis = (time.monotonic() - started) * 1000
    verdict = "healthy" if is_healthy(status) else "unhealthy"
    return HealthResult(
        is_healthy(status), f"{verdict}: {url} answered {status} in {millis:.0f} ms"
    )


def check_tcp(target: str, timeout: float = 3.0) -> HealthResult:
    """Connect to ``HOST:PORT``; raises ConfigError when it is not that form or ``timeout``
    is not a number of seconds above 0."""
    check_seconds("--timeout", timeout)
    host, port = split_address(target)
    try:
        # name lookup and every address tried, within the timeout
        bounded(timeout, lambda: socket.create_connection((host, port), timeout=timeout).close())
    except NotReadyYet as error:
        return HealthResult(False, f"unhealthy: tcp {target}: {error}")
    except OSError as error:
        return HealthResult(False, f"unhealthy: tcp {target}: {failure_reason(error)}")
    return HealthResult(True, f"healthy: tcp {target} accepts connections")


def check_file(path: str, max_age: float = 60.0, *, now: float | None = None) -> HealthResult:
    """Healthy while ``path`` exists and was modified less than ``max_age`` seconds ago (a
    worker's heartbeat); not when modified more than FUTURE_TOLERANCE seconds in the future,
    which would stay "recent" for ever. Raises ConfigError when ``max_age`` is not above 0."""
    check_seconds("--max-age", max_age)
    try:
        modified = os.stat(path).st_mtime
    except OSError as error:
        reason = error.strerror.lower() if error.strerror else type(error).__name__
        return HealthResult(False, f"unhealthy: {path}: {reason}")
    age = (time.time() if now is None else now) - modified
    if age < -FUTURE_TOLERANCE:  # a clock set back, a copied file: it proves no heartbeat
        return HealthResult(
            False, f"unhealthy: {path} modified in the future ({-age:.1f} s from now)"
        )
    age = max(0.0, age)
    if age < max_age:
        return HealthResult(True, f"healthy: {path} modified {age:.1f} s ago")
    return HealthResult(
        False, f"unhealthy: {path} modified {age:.1f} s ago (more than {max_age:g} s)"
    )


def failure_reason(error: BaseException) -> str:
    """A short lower-case reason for a failed connection or request, control characters
    escaped (it may quote what the server sent)."""
    if isinstance(error, TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    return printable(str(error) or type(error).__name__)
