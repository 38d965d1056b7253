"""The retry loop every wait shares: bounded attempts, short growing pauses, one deadline.

An attempt either succeeds, fails in a way that waiting may cure (``NotReadyYet``: refused,
no such host yet, starting up, too many clients, ...) or fails for good (an ``EntrykitError``
such as ``DatabaseRefused``), which ends the wait at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from entrykit.database import CONNECT_TIMEOUT
from entrykit.errors import Cancelled, DependencyNotReady

log = logging.getLogger("entrykit.wait")

FIRST_RETRY_INTERVAL = 0.05
# The contract allows 0.5 s; a quarter second keeps "seen within half a second" true even
# with the attempt's own cost added, and a refused connection costs the server nothing.
MAX_RETRY_INTERVAL = 0.25
PROGRESS_EVERY = 5.0  # seconds between "still waiting" lines

Clock = Callable[[], float]
Sleep = Callable[[float], object]


class NotReadyYet(Exception):
    """An attempt failed in a way that waiting may cure; the text says how."""


def retry_intervals(
    first: float = FIRST_RETRY_INTERVAL, most: float = MAX_RETRY_INTERVAL
) -> Callable[[int], float]:
    """The pause after the n-th failed attempt (n from 1): doubling from ``first`` to ``most``."""

    def interval(failures: int) -> float:
        return min(most, first * 2.0 ** (failures - 1))

    return interval


def _default_sleep(cancel: threading.Event | None) -> Sleep:
    if cancel is not None:
        return cancel.wait  # a set event wakes the pause at once
    return time.sleep


def retry_until_ready(
    what: str,
    shown: str,
    attempt: Callable[[float], object],
    *,
    deadline: float,
    clock: Clock = time.monotonic,
    sleep: Sleep | None = None,
    cancel: threading.Event | None = None,
    interval: Callable[[int], float] | None = None,
    logger: logging.Logger = log,
) -> int:
    """Call ``attempt(timeout)`` until it returns; return the number of tries.

    ``what`` names the dependency in the ready line (``database db:5432``), ``shown`` in the
    waiting lines (the masked URL). ``attempt`` raises ``NotReadyYet`` for a failure worth
    retrying; any ``EntrykitError`` it raises ends the wait. Raises DependencyNotReady at the
    deadline (with the last error) and Cancelled when ``cancel`` is set.
    """
    sleep = sleep or _default_sleep(cancel)
    interval = interval or retry_intervals()
    started = clock()
    tries = 0
    last_error = ""
    next_progress = started
    while True:
        if cancel is not None and cancel.is_set():
            raise Cancelled(f"stopped waiting for {what}")
        now = clock()
        tries += 1
        try:
            attempt(max(0.1, min(CONNECT_TIMEOUT, deadline - now)))
        except NotReadyYet as error:
            last_error = str(error)
        else:
            _log_ready(logger, what, clock() - started, tries)
            return tries
        now = clock()
        if now >= next_progress:
            prefix = "waiting for" if tries == 1 else "still waiting for"
            logger.info("%s %s: %s (%.1f s)", prefix, shown, last_error, now - started)
            next_progress = (now if tries == 1 else next_progress) + PROGRESS_EVERY
        if now >= deadline:
            raise DependencyNotReady(
                f"{what} not ready after {now - started:.1f} s ({tries} tries): {last_error}"
            )
        sleep(min(interval(tries), deadline - now))


def _log_ready(logger: logging.Logger, what: str, seconds: float, tries: int) -> None:
    logger.info(
        "%s ready after %.2f s (%d %s)", what, seconds, tries, "try" if tries == 1 else "tries"
    )
