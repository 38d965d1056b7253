"""``ENTRYKIT_MIGRATE=wait``: polling until another replica or a migration Job has migrated,
the loop both migrators (Alembic, a migrate command) share."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from entrykit.errors import DependencyNotReady
from entrykit.waits.retry import Clock, Sleep, retry_intervals, retry_until_ready


def poll_until_migrated(
    what: str,
    attempt: Callable[[float], object],
    *,
    deadline: float,
    most: float,
    logger: logging.Logger,
    clock: Clock = time.monotonic,
    sleep: Sleep | None = None,
    cancel: threading.Event | None = None,
) -> None:
    """Call ``attempt`` (it raises NotReadyYet while migrations are pending) at most ``most``
    seconds apart until it passes. Raises DependencyNotReady at the deadline, saying what a
    replica in wait mode is waiting for, and Cancelled."""
    try:
        retry_until_ready(
            what,
            what,
            attempt,
            deadline=deadline,
            clock=clock,
            sleep=sleep,
            cancel=cancel,
            interval=retry_intervals(0.1, most),
            logger=logger,
        )
    except DependencyNotReady as error:
        raise DependencyNotReady(
            f"{error} (ENTRYKIT_MIGRATE=wait: is the migration Job running?)"
        ) from None
