"""Waiting for Redis or Valkey with redis-py: AUTH (when the URL has a password), then
``PING`` must answer ``PONG``.

Not ready: refused or dropped connections, timeouts, ``LOADING`` (a restart still reading
its dataset, while TCP already accepts), ``MASTERDOWN`` (a replica cut off from its master),
``BUSY`` (a long script). Refused for good: a wrong password or unknown user (``WRONGPASS``),
``NOAUTH`` (the URL has no password and the server wants one), ``NOPERM`` (the user may not
run PING), a database number the server does not have. Each case is proven against a real
``redis-server`` in the tests.
"""

from __future__ import annotations

import os
import socket
from typing import Any
from urllib.parse import SplitResult, parse_qs, parse_qsl, urlsplit

from entrykit.database import CONNECT_TIMEOUT
from entrykit.errors import ConfigError
from entrykit.logs import mask_url
from entrykit.waits.check import Check, ErrorKind, host_port, raise_classified
from entrykit.waits.clients import require_client
from entrykit.waits.urls import url_host

# redis-py knows redis:// and rediss://; Valkey speaks the same protocol.
_REDIS_SCHEME = {"redis": "redis", "rediss": "rediss", "valkey": "redis", "valkeys": "rediss"}
_GREETING_WAIT = 0.3  # a protected-mode server sends -DENIED as soon as it accepts
# Connection arguments that are objects, or that the wait sets: not for a URL's query.
_OBJECT_OPTIONS = {
    "connection_class",
    "connection_pool",
    "credential_provider",
    "driver_info",
    "event_dispatcher",
    "redis_connect_func",
    "retry",
    "retry_on_error",
    "socket_keepalive_options",
    "ssl_context",
}
_REFUSED_PREFIXES = ("WRONGPASS", "NOAUTH", "NOPERM", "ERR AUTH", "DB INDEX IS OUT OF RANGE")


def classify_redis_error(error: BaseException) -> ErrorKind:
    """Is a failed PING worth retrying, refused for good, or a bad URL?"""
    from redis import exceptions

    # AuthenticationError is a ConnectionError in redis-py: test it first.
    if isinstance(error, exceptions.AuthenticationError | exceptions.NoPermissionError):
        return "refused"
    if isinstance(error, exceptions.ResponseError) and str(error).upper().startswith(
        _REFUSED_PREFIXES
    ):
        return "refused"
    return "transient"  # LOADING, MASTERDOWN, BUSY, connection errors, timeouts, the unknown


_TLS_FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_ca_path")


def redis_check(url: str) -> Check:
    """AUTH and PING on the server of a ``redis://``, ``rediss://``, ``valkey://`` or
    ``valkeys://`` URL.

    Raises ConfigError for a bad URL or when redis-py (the ``redis`` extra) is not installed.
    """
    scheme, _, rest = url.partition("://")
    redis = require_client("redis", "redis", scheme.lower())
    client_url = f"{_REDIS_SCHEME[scheme.lower()]}://{rest}"
    try:
        parts = urlsplit(url)
        address = host_port(url_host(parts) or "localhost", parts.port or 6379)
        database = parts.path.strip("/")
        if database and not (database.isascii() and database.isdigit()):
            raise ValueError(f"the database must be a number, not {database!r}")
        _check_options(parts.query)
        for name, value in parse_qsl(parts.query):
            if name in _TLS_FILES and not os.access(value, os.R_OK):  # else "Error 2 connecting"
                raise ValueError(f"{name} {value!r} cannot be read")
        client = _client(redis, client_url, CONNECT_TIMEOUT)  # the URL's options parse
        # redis-py hands unknown options (?bogus=1, ssl_* on redis://) to the connection,
        # which refuses them only when built: build one now (it does not connect)
        client.connection_pool.make_connection()
        client.close()
    except TypeError as error:
        text = str(error)  # "...__init__() got an unexpected keyword argument 'bogus'"
        if "unexpected keyword argument" in text:
            text = f"unknown option {text.rpartition(' ')[2]}"
        raise ConfigError(f"invalid URL {mask_url(url)!r}: {text}") from None
    except Exception as error:  # what redis-py refuses before connecting, no retry cures
        reason = str(error).strip() or type(error).__name__
        raise ConfigError(f"invalid URL {mask_url(url)!r}: {reason}") from None
    masked = mask_url(url)

    def attempt(timeout: float) -> None:
        client = _client(redis, client_url, timeout)  # a new one: timeouts of this try
        try:
            answer = client.ping()
        except Exception as error:
            kind, reason = classify_redis_error(error), _reason(error)
            denied = _denied(parts, timeout) if _maybe_denied(error, scheme) else None
            if denied is not None:  # protected mode: no wait can cure it
                kind, reason = "refused", denied
            raise_classified(kind, f"redis {address}", masked, reason)
        finally:
            client.close()
        if answer is not True:
            raise_classified("transient", "", masked, f"PING answered {answer!r}")

    return Check(f"redis {address}", f"redis {masked}", attempt)


def _maybe_denied(error: BaseException, scheme: str) -> bool:
    """A plain connection dropped once open: what a server in protected mode does after
    sending ``-DENIED``, which redis-py reports as a broken pipe or a reset."""
    from redis import exceptions

    return (
        scheme.lower() in ("redis", "valkey")
        and isinstance(error, exceptions.ConnectionError)
        and "connecting to" not in str(error)  # it never opened: no greeting was sent
    )


def _denied(parts: SplitResult, timeout: float) -> str | None:
    """The ``-DENIED`` greeting of a server in protected mode (a Redis with no password
    reached on an address other than loopback), which it sends unasked on accepting and
    then closes; None when the server sends nothing (every other Redis waits for a command)."""
    try:
        with socket.create_connection(
            (url_host(parts) or "localhost", parts.port or 6379), timeout=timeout
        ) as sock:
            sock.settimeout(min(timeout, _GREETING_WAIT))
            greeting = sock.recv(4096)
    except OSError:
        return None
    if not greeting.startswith(b"-DENIED"):
        return None
    text = greeting[1:].decode("utf-8", "replace").splitlines()[0]
    # the text goes on for a paragraph of remedies: its first two sentences say what it is
    end = text.find("loopback interface.")
    return text[: end + len("loopback interface.")] if end >= 0 else text[:200]


def _check_options(query: str) -> None:
    """Raises ValueError for an option redis-py would take from the URL as text where it
    needs a Python object, or that entrykit sets itself (redis-py lets the URL override)."""
    for name in parse_qs(query, keep_blank_values=True):
        if name in _OBJECT_OPTIONS:
            raise ValueError(f"option {name!r} cannot be given in a URL")


def _client(redis: Any, url: str, timeout: float) -> Any:
    """A redis-py client that connects only when used; raises ValueError for a bad URL."""
    return redis.Redis.from_url(
        url,
        # RESP2 (AUTH, SELECT, PING) works with every Redis and Valkey; HELLO needs Redis 6.
        protocol=2,
        retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0),  # the wait retries, not redis-py
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
    )


def _reason(error: BaseException) -> str:
    from redis import exceptions

    text = str(error).strip() or type(error).__name__
    # redis-py drops the reply's code word for the errors it maps to classes: put it back.
    code = {
        exceptions.BusyLoadingError: "LOADING",
        exceptions.MasterDownError: "MASTERDOWN",
        exceptions.NoPermissionError: "NOPERM",
    }.get(type(error))
    return f"{code} {text}" if code and not text.startswith(code) else text
