"""When a prefetch must stop: the caller's cancel (SIGTERM), a failed sibling task, a deadline."""

from __future__ import annotations

import threading
import time

from entrykit.errors import PrefetchFailed


class ShouldStop:
    """Raises when the run must stop: one of ``events`` set (the caller's cancel, or another
    task failed), or the deadline passed."""

    def __init__(self, *events: threading.Event | None, deadline: float | None = None) -> None:
        self.events = tuple(e for e in events if e is not None)
        self.deadline = deadline  # time.monotonic() value, or None

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def __call__(self) -> None:
        if any(event.is_set() for event in self.events):
            raise PrefetchFailed("prefetch stopped")
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise PrefetchFailed("prefetch did not finish before its deadline")

    def sleep(self, seconds: float) -> None:
        """Sleep, waking early (and raising) when the run must stop."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self()
            if self.events:
                self.events[0].wait(min(left, 0.1))
            else:
                time.sleep(min(left, 0.1))
        self()
