"""What one wait needs: a name for log lines, a masked URL, and one readiness attempt.

Each dependency kind (postgres, mysql, redis, amqp, mongodb, tcp, http, files) builds a
:class:`Check` from its URL; :func:`wait_until_ready` runs it in the one retry loop.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Literal, NamedTuple, NoReturn

from entrykit.errors import ConfigError, DatabaseRefused
from entrykit.waits.retry import Clock, NotReadyYet, Sleep, printable, retry_until_ready


class Check(NamedTuple):
    """One dependency, ready to be waited on."""

    what: str  # the ready line's name: "redis 127.0.0.1:6379"
    shown: str  # the waiting lines' name: the masked URL
    attempt: Callable[[float], object]  # raises NotReadyYet, or an EntrykitError for good


def wait_until_ready(
    check: Check,
    deadline: float,
    *,
    clock: Clock = time.monotonic,
    sleep: Sleep | None = None,
    cancel: threading.Event | None = None,
) -> int:
    """Retry ``check.attempt`` until it succeeds; return the number of tries.

    Raises the attempt's EntrykitError (e.g. DatabaseRefused), DependencyNotReady at the
    deadline, Cancelled.
    """
    return retry_until_ready(
        check.what,
        check.shown,
        check.attempt,
        deadline=deadline,
        clock=clock,
        sleep=sleep,
        cancel=cancel,
        bound_tries=True,  # a server trickling bytes must not hold a try past its time
    )


def host_port(host: str, port: int) -> str:
    """``host:port`` for log lines, IPv6 hosts in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


ErrorKind = Literal["transient", "refused", "config"]


def raise_classified(kind: ErrorKind, who: str, masked: str, reason: str) -> NoReturn:
    """Turn a failed attempt into the loop's terms: NotReadyYet (retry), DatabaseRefused
    (exit 21: ``who`` refused ``masked`` for good) or ConfigError (a bad URL)."""
    reason = printable(reason)  # it may quote what the server sent
    if kind == "refused":
        raise DatabaseRefused(f"{who} refused {masked}: {reason}")
    if kind == "config":
        raise ConfigError(f"URL {masked}: {reason}")
    raise NotReadyYet(reason)
