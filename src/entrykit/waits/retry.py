"""The retry loop every wait shares, built on tenacity: short growing pauses, one deadline.

An attempt either succeeds, fails in a way that waiting may cure (``NotReadyYet``: refused,
no such host yet, starting up, too many clients, ...) or fails for good (an ``EntrykitError``
such as ``DatabaseRefused``), which ends the wait at once. tenacity is imported by the
function that retries, not by this module, so that importing ``cancellable_sleep`` is free.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from entrykit.database import CONNECT_TIMEOUT
from entrykit.errors import Cancelled, DependencyNotReady

if TYPE_CHECKING:
    from tenacity import RetryCallState

log = logging.getLogger("entrykit.wait")

FIRST_RETRY_INTERVAL = 0.05
# The contract allows 0.5 s; a quarter second keeps "seen within half a second" true even
# with the attempt's own cost added, and a refused connection costs the server nothing.
MAX_RETRY_INTERVAL = 0.25
PROGRESS_EVERY = 5.0  # seconds between "still waiting" lines
# A dependency's first try gets at least this long, even when preparing the checks (client
# imports, hundreds of URLs) used up the deadline: every dependency gets one real try.
FIRST_TRY_FLOOR = 0.5
LATER_TRY_FLOOR = 0.1
# A try is given up this long after its own timeout, so that the client's own timeout (and
# its reason) usually ends it first.
TRY_GRACE = 0.25
# The longest a wait can run past its deadline: its last try, started just before it.
DEADLINE_GRACE = FIRST_TRY_FLOOR + TRY_GRACE + 0.15

Clock = Callable[[], float]
Sleep = Callable[[float], object]


class NotReadyYet(Exception):
    """An attempt failed in a way that waiting may cure; the text says how (control
    characters escaped: it may quote what a server sent)."""

    def __init__(self, reason: str) -> None:
        super().__init__(printable(reason))


def printable(text: str) -> str:
    """``text`` with every control or other unprintable character escaped (``\\x00``,
    ``\\r``), so that what a dependency sent cannot break a log line."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else ascii(char)[1:-1] for char in text)


def retry_intervals(
    first: float = FIRST_RETRY_INTERVAL, most: float = MAX_RETRY_INTERVAL
) -> Callable[[int], float]:
    """The pause after the n-th failed attempt (n from 1): doubling from ``first`` to ``most``."""

    def interval(failures: int) -> float:
        return min(most, first * 2.0 ** (failures - 1))

    return interval


def cancellable_sleep(cancel: threading.Event | None) -> Sleep:
    """A sleep function that returns early once ``cancel`` is set (plain ``time.sleep``
    without one). It raises nothing: the caller checks ``cancel`` after it returns."""
    if cancel is not None:
        return cancel.wait
    return time.sleep


def bounded(
    timeout: float, call: Callable[[], object], *, cancel: threading.Event | None = None
) -> None:
    """``call()`` in a daemon thread of its own, given up after ``timeout`` seconds (or once
    ``cancel`` is set): a client's timeouts bound each read, not a whole try, so a server
    trickling a byte at a time would hold it for ever. A call given up on goes on in the
    background until its client ends it (or the process exits).

    Raises what ``call`` raised, NotReadyYet("timed out"), or Cancelled.
    """
    outcome: list[BaseException | None] = []
    done = threading.Event()

    def run() -> None:
        try:
            call()
        except BaseException as error:  # handed to the waiting thread
            outcome.append(error)
        else:
            outcome.append(None)
        finally:
            done.set()

    thread = threading.Thread(target=run, name="wait-try", daemon=True)
    thread.start()
    given_up = time.monotonic() + timeout
    while not done.wait(max(0.0, min(0.05, given_up - time.monotonic()))):
        if cancel is not None and cancel.is_set():
            raise Cancelled("stopped while trying")
        if time.monotonic() >= given_up:
            raise NotReadyYet("timed out")
    if outcome[0] is not None:
        raise outcome[0]


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
    bound_tries: bool = False,
) -> int:
    """Call ``attempt(timeout)`` until it returns; return the number of tries.

    ``what`` names the dependency in the ready line (``database db:5432``), ``shown`` in the
    waiting lines (the masked URL). ``attempt`` raises ``NotReadyYet`` for a failure worth
    retrying; any ``EntrykitError`` it raises ends the wait. With ``bound_tries`` (a client
    talking to a dependency), each try is given up ``timeout`` + TRY_GRACE after it starts
    (see :func:`bounded`), and the first one gets at least FIRST_TRY_FLOOR. Raises
    DependencyNotReady at the deadline (with the last error) and Cancelled when ``cancel``
    is set.
    """
    import tenacity

    started = clock()
    # tenacity's exponential wait: FIRST * 2**(n-1), at most MAX, after the n-th failure
    backoff: Callable[[RetryCallState], float] = (
        tenacity.wait_exponential(multiplier=FIRST_RETRY_INTERVAL, max=MAX_RETRY_INTERVAL)
        if interval is None
        else lambda state: interval(state.attempt_number)
    )
    progress = _Progress(logger, shown, started, clock)
    sleep_for = sleep or cancellable_sleep(cancel)
    tries = 0

    def pause(seconds: float) -> None:
        sleep_for(seconds)

    def one_try() -> None:
        nonlocal tries
        if cancel is not None and cancel.is_set():
            raise Cancelled(f"stopped waiting for {what}")
        tries += 1
        floor = FIRST_TRY_FLOOR if tries == 1 and bound_tries else LATER_TRY_FLOOR
        timeout = max(floor, min(CONNECT_TIMEOUT, deadline - clock()))
        if not bound_tries:  # e.g. a migration check command: its own timeouts end it
            attempt(timeout)
            return
        try:
            bounded(timeout + TRY_GRACE, lambda: attempt(timeout), cancel=cancel)
        except Cancelled:
            raise Cancelled(f"stopped waiting for {what}") from None

    def not_ready(state: RetryCallState) -> None:
        now = clock()
        raise DependencyNotReady(
            f"{what} not ready after {now - started:.1f} s "
            f"({state.attempt_number} {'try' if state.attempt_number == 1 else 'tries'}): "
            f"{_last_error(state)}"
        )

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(NotReadyYet),
        stop=lambda state: clock() >= deadline,
        # never sleep past the deadline: the last try happens at it
        wait=lambda state: min(backoff(state), max(0.0, deadline - clock())),
        after=progress.failed,
        retry_error_callback=not_ready,
        sleep=pause,
    )
    retrying(one_try)
    _log_ready(logger, what, clock() - started, tries)
    return tries


class _Progress:
    """The waiting lines: one at the first failure, then one every PROGRESS_EVERY seconds."""

    def __init__(self, logger: logging.Logger, shown: str, started: float, clock: Clock) -> None:
        self.logger = logger
        self.shown = shown
        self.started = started
        self.clock = clock
        self.next_line = started

    def failed(self, state: RetryCallState) -> None:
        now = self.clock()
        if now < self.next_line:
            return
        first = state.attempt_number == 1
        self.logger.info(
            "%s %s: %s (%.1f s)",
            "waiting for" if first else "still waiting for",
            self.shown,
            _last_error(state),
            now - self.started,
        )
        self.next_line = (now if first else self.next_line) + PROGRESS_EVERY


def _last_error(state: RetryCallState) -> str:
    outcome = state.outcome
    error = outcome.exception() if outcome is not None else None
    return printable(str(error)) if error is not None else ""


def _log_ready(logger: logging.Logger, what: str, seconds: float, tries: int) -> None:
    logger.info(
        "%s ready after %.2f s (%d %s)", what, seconds, tries, "try" if tries == 1 else "tries"
    )
