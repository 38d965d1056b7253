"""Waiting for a replica lock and holding it, whatever the lock: the poll (on tenacity, the one
retry engine, logging who holds it), the keep-alive while held, the release, and LockLost when
the lock's session ended while it was held."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, NamedTuple

from entrykit.errors import Cancelled, EntrykitError, MigrationLockTimeout
from entrykit.migrations.lock_keepalive import KeepAlive, describe_loss
from entrykit.waits.retry import Clock, Sleep, cancellable_sleep, printable, retry_intervals

if TYPE_CHECKING:
    from tenacity import RetryCallState

LOCK_POLL_FIRST = 0.05
LOCK_POLL_MOST = 0.5
HOLDER_LOG_EVERY = 15.0


class LockLost(MigrationLockTimeout):
    """The lock's database session ended: while the lock was held, so another replica may
    have run at the same time, or while waiting for it (a failover, ``pg_terminate_backend``),
    so nothing ran (exit 31, as the lock's other failure)."""


class LockWait(NamedTuple):
    """How to wait for a lock: at most ``timeout`` seconds, stopped early by ``cancel``."""

    timeout: float
    cancel: threading.Event | None
    clock: Clock
    sleep: Sleep | None
    logger: logging.Logger


def poll_lock(
    try_lock: Callable[[], bool], holder: Callable[[], str], name: str, wait: LockWait
) -> float:
    """Call ``try_lock`` until it returns True; return the seconds it took (0.0 exactly when
    the first try got it).

    Logs who holds the lock when the wait starts and every 15 s. Raises MigrationLockTimeout
    after ``wait.timeout`` seconds, Cancelled when ``wait.cancel`` is set.
    """
    import tenacity

    timeout, cancel, clock, sleep, logger = wait

    interval = retry_intervals(LOCK_POLL_FIRST, LOCK_POLL_MOST)
    started = clock()
    next_log = [started]
    pause_for = sleep or cancellable_sleep(cancel)

    def pause_between(seconds: float) -> None:  # tenacity's sleep type returns None
        pause_for(seconds)

    def out_of_time(state: RetryCallState) -> bool:
        return clock() - started >= timeout

    def pause(state: RetryCallState) -> float:
        return min(interval(state.attempt_number), max(0.0, started + timeout - clock()))

    def before_pause(state: RetryCallState) -> None:
        if cancel is not None and cancel.is_set():
            raise Cancelled(f"stopped waiting for {name}")
        now = clock()
        if now >= next_log[0]:
            logger.info("waiting for %s (%.0f s so far), held by %s", name, now - started, holder())
            next_log[0] = now + HOLDER_LOG_EVERY

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_result(lambda got: not got),
        stop=out_of_time,
        wait=pause,
        sleep=pause_between,
        before_sleep=before_pause,
        retry_error_callback=lambda state: False,
        reraise=True,
    )
    if not retrying(try_lock):
        raise MigrationLockTimeout(
            f"waited {clock() - started:.0f} s for {name} "
            f"(ENTRYKIT_MIGRATE_LOCK_TIMEOUT={timeout:g}), held by {holder()}"
        )
    if retrying.statistics.get("attempt_number", 1) == 1:
        return 0.0  # free at once: nobody else held it since we looked
    waited = clock() - started
    logger.info("got %s after %.2f s", name, waited)
    return waited


@contextlib.contextmanager
def holding(
    try_lock: Callable[[], bool],
    holder: Callable[[], str],
    release: Callable[[], object],
    close: Callable[[], object],
    label: str,
    wait: LockWait,
    once_held: Callable[[], object] = lambda: None,
    keep_alive: Callable[[], KeepAlive] | None = None,
) -> Iterator[float]:
    """Poll for a lock, run ``once_held`` when it is ours, start ``keep_alive`` (a session
    lock), yield the seconds waited; then ``release`` it (only if held) and ``close`` the
    session, whatever happens.

    A session lost while held (``release`` failing or returning False counts) is raised as
    LockLost once the body is done, unless the body raised an error of its own: that stands.
    A session that fails while waiting (``try_lock``, ``once_held``) is LockLost at once,
    one line; the body does not run.
    """
    held = False
    keeper: KeepAlive | None = None
    lost: str | None = None
    try:
        try:
            waited = poll_lock(try_lock, holder, label, wait)
            held = True
            once_held()
        except EntrykitError:
            raise
        except Exception as error:  # the session ended under the poll: no retry on it
            raise LockLost(
                f"lost the session of {label} while {'taking' if held else 'waiting for'} it "
                f"({printable(describe_loss(error))}); nothing ran under it"
            ) from None
        keeper = keep_alive() if keep_alive is not None else None
        yield waited
    finally:
        lost = keeper.stop() if keeper is not None else None
        if held and lost is None:
            try:
                if release() is False:
                    lost = "the server no longer had it when it was let go"
            except Exception as error:
                if keeper is not None:  # a file lock holds until the file is closed
                    lost = describe_loss(error)
            if lost is not None and keeper is not None:
                keeper.report(lost)
        if keeper is None or not keeper.hung:  # closing under a running query could crash
            with contextlib.suppress(Exception):
                close()
    if lost is not None:
        raise LockLost(
            f"lost {label} while holding it ({lost}): another replica may have run "
            "at the same time as this one"
        )
