"""Download progress: a bar on a terminal, else a log line every few seconds (docker logs)."""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any

logger = logging.getLogger("entrykit.prefetch")


def human_bytes(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(count) < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"  # pragma: no cover - the loop returns first


def plural(count: int, noun: str) -> str:
    """``1 file``, ``2 files``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


class Progress:
    """Bytes done out of a total, shared by the download threads."""

    def __init__(self, total: int, *, interval: float, terminal: bool | None = None) -> None:
        self.total = total
        self.done = 0
        self.interval = interval
        self.terminal = sys.stderr.isatty() if terminal is None else terminal
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._started = time.monotonic()
        self._bar: Any = None
        self._ticker: threading.Thread | None = None

    def __enter__(self) -> Progress:
        if self.total <= 0:
            return self
        if self.terminal:
            from tqdm import tqdm  # type: ignore[import-untyped]

            self._bar = tqdm(
                total=self.total,
                unit="B",
                unit_scale=True,
                unit_divisor=1000,
                desc="prefetch",
                file=sys.stderr,
                leave=False,
                dynamic_ncols=True,
            )
        else:
            self._ticker = threading.Thread(
                target=self._tick, name="prefetch-progress", daemon=True
            )
            self._ticker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        if self._bar is not None:
            self._bar.close()

    def add(self, count: int) -> None:
        with self._lock:
            self.done += count
            if self._bar is not None:
                self._bar.update(count)

    def _tick(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                done = self.done
            elapsed = time.monotonic() - self._started
            percent = 100 * done / self.total if self.total else 100.0
            logger.info(
                "downloaded %s of %s (%.0f%%) at %s/s",
                human_bytes(done),
                human_bytes(self.total),
                percent,
                human_bytes(done / elapsed if elapsed > 0 else 0),
            )
