"""Retrying Hub requests, on tenacity: backoff with jitter, the server's wait, a give-up time.

A failure is transient (``Transient``, connection errors, timeouts: worth retrying) or final
(an ``EntrykitError``: ends the request at once). The give-up time counts only failures in a
row without progress; the time spent waiting out a rate limit (429 with ``Retry-After`` or a
``RateLimit: "api";r=0;t=N`` header) is not counted, since waiting is what cures it. Every
sleep is ``ShouldStop.sleep``, which wakes at once on cancel (SIGTERM) or when the run fails.
"""

from __future__ import annotations

import logging
import math
import random
import re
import time
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from entrykit.errors import PrefetchFailed
from entrykit.hub.stop import ShouldStop

if TYPE_CHECKING:
    from tenacity import RetryCallState

logger = logging.getLogger("entrykit.prefetch")

_T = TypeVar("_T")
MAX_RATE_LIMIT_WAIT = 600.0  # a Hub window lasts up to 5 minutes; never trust a larger ask
_RATELIMIT_RESET = re.compile(r"(?:^|;)\s*t\s*=\s*(\d+(?:\.\d+)?)")


class Transient(Exception):
    """A failure worth retrying; ``retry_after`` is the server's wait, if it gave one."""

    def __init__(
        self, reason: str, retry_after: float | None = None, *, rate_limited: bool = False
    ) -> None:
        super().__init__(reason)
        self.retry_after = retry_after
        self.rate_limited = rate_limited


class RangeRejected(Transient):
    """416 on a resume: the partial file is not a prefix of this file; start over."""


class HubUnreachable(PrefetchFailed):
    """Transient failures went on past the give-up time: the Hub is down or out of reach."""


@dataclass(frozen=True)
class RetryPolicy:
    """Timeouts and the retry schedule; ``delay`` is pure so the schedule can be tested."""

    connect_timeout: float = 10.0
    read_timeout: float = 30.0  # silence on an open connection counts as a failure
    base_delay: float = 0.5
    max_delay: float = 10.0
    give_up_after: float = 120.0  # seconds of failures in a row without a byte of progress
    outage_give_up: float = 5.0  # the same, when a complete cached snapshot can stand in

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait before retry ``attempt`` (1-based): exponential backoff with
        jitter (half to full), never less than what the server asked for."""
        backoff: float = min(self.max_delay, self.base_delay * 2.0 ** (attempt - 1))
        wait: float = backoff * rng.uniform(0.5, 1.0)
        if retry_after is not None:
            wait = max(wait, min(retry_after, MAX_RATE_LIMIT_WAIT))
        return wait


def server_wait(headers: Mapping[str, str], now: Callable[[], float] = time.time) -> float | None:
    """Seconds the server asks us to wait: ``Retry-After`` (seconds, or an HTTP date as RFC
    9110 allows), else the reset time of the ``RateLimit`` header (``"api";r=0;t=55``); None
    when it says neither. The caller caps it (`MAX_RATE_LIMIT_WAIT`)."""
    value = headers.get("retry-after", "").strip()
    try:
        seconds = float(value)
        return max(0.0, seconds) if math.isfinite(seconds) else None
    except ValueError:
        pass
    if value:
        with suppress(TypeError, ValueError, IndexError, OverflowError):
            from email.utils import parsedate_to_datetime

            return max(0.0, parsedate_to_datetime(value).timestamp() - now())
    match = _RATELIMIT_RESET.search(headers.get("ratelimit", ""))
    return float(match.group(1)) if match else None


class _Streak:
    """The current run of failures: when it began, time spent on rate limits, progress."""

    def __init__(
        self,
        policy: RetryPolicy,
        give_up_after: float,
        progress: Callable[[], int] | None,
        should_stop: ShouldStop,
    ) -> None:
        self.policy = policy
        self.give_up_after = give_up_after
        self.progress = progress
        self.should_stop = should_stop
        self.last_progress = progress() if progress else 0
        self.failures = 0
        self.began = 0.0
        self.rate_limit_wait = 0.0
        self.rng = random.Random()

    def stop(self, state: RetryCallState) -> bool:
        if self.progress is not None and (now_progress := self.progress()) > self.last_progress:
            self.last_progress, self.failures = now_progress, 0
        self.failures += 1
        if self.failures == 1:
            self.began, self.rate_limit_wait = time.monotonic(), 0.0
        error = _error_of(state)
        if isinstance(error, Transient) and error.rate_limited:
            return False  # waiting is the cure; the wait itself is bounded
        return self.failures > 1 and self.budget_left() <= 0

    def budget_left(self) -> float:
        """Seconds of failing left before giving up (rate-limit waits not counted)."""
        return self.give_up_after - (time.monotonic() - self.began - self.rate_limit_wait)

    def wait(self, state: RetryCallState) -> float:
        error = _error_of(state)
        rate_limited = isinstance(error, Transient) and error.rate_limited
        retry_after = error.retry_after if isinstance(error, Transient) else None
        wait = self.policy.delay(self.failures, retry_after, self.rng)
        if not rate_limited:  # the last try happens at the give-up time, not long after it
            wait = min(wait, max(self.budget_left(), 0.0))
        remaining = self.should_stop.remaining()
        if remaining is not None:
            wait = min(wait, max(remaining, 0.0))
        if rate_limited:
            self.rate_limit_wait += wait
        return wait


def retrying(
    label: str,
    url: str,
    attempt: Callable[[], _T],
    *,
    policy: RetryPolicy,
    should_stop: ShouldStop,
    transient: tuple[type[BaseException], ...],
    progress: Callable[[], int] | None = None,
    give_up_after: float | None = None,
    retry_level: int = logging.WARNING,
) -> _T:
    """Run ``attempt`` until it succeeds. Failures of the ``transient`` types are retried
    until ``give_up_after`` (default: the policy's) seconds pass without progress, not
    counting rate-limit waits; each retry is logged at ``retry_level``. Raises
    HubUnreachable on giving up, PrefetchFailed when the run must stop, and whatever final
    error ``attempt`` raises."""
    import tenacity

    streak = _Streak(
        policy,
        policy.give_up_after if give_up_after is None else give_up_after,
        progress,
        should_stop,
    )

    def one_try() -> _T:
        should_stop()
        return attempt()

    def log_retry(state: RetryCallState) -> None:
        wait = state.next_action.sleep if state.next_action else 0.0
        logger.log(
            retry_level, "%s: %s; retry %d in %.1f s", label, _reason(state), streak.failures, wait
        )

    def give_up(state: RetryCallState) -> _T:
        raise HubUnreachable(
            f"{label}: giving up on {where(url)} after {streak.failures} attempts in "
            f"{time.monotonic() - streak.began:.0f} s: {_reason(state)}"
        )

    retryer = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(transient),
        stop=streak.stop,
        wait=streak.wait,
        sleep=should_stop.sleep,
        before_sleep=log_retry,
        retry_error_callback=give_up,
    )
    return retryer(one_try)


def _error_of(state: RetryCallState) -> BaseException | None:
    return state.outcome.exception() if state.outcome is not None else None


def _reason(state: RetryCallState) -> str:
    error = _error_of(state)
    return (str(error) or type(error).__name__) if error is not None else "no answer"


def where(url: str) -> str:
    """The URL without its query (signed CDN URLs carry credentials there)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}{parts.path}"
