"""A background worker started through entrykit: `entrykit python -m worker`.

It does two kinds of jobs:

- the jobs the API queues with each note (the `jobs` table), taken with ``FOR UPDATE SKIP
  LOCKED`` so several workers share them;
- with ``REDIS_URL`` set, JSON messages from the Redis list ``WORKER_QUEUE`` (default
  ``jobs``): ``{"note": "text"}`` stores a note (and so queues its database job, done at once).
  ``redis-cli LPUSH jobs '{"note": "hello"}'`` is a job.

With ``WORKER_HEARTBEAT`` set to a path, the loop touches that file at least every
``WORKER_HEARTBEAT_EVERY`` seconds (default 5), whether or not there is work, and the container
is health-checked with ``entrykit healthcheck --file PATH --max-age 30``: a worker stuck in a
job or a dead loop stops touching it and turns unhealthy.

entrykit execs it, so it is PID 1 in its container and receives `docker stop`'s (or
Kubernetes') SIGTERM itself. It finishes the unit of work in hand, then exits 0 well within the
grace period, instead of being killed mid-way by SIGKILL 10 (or 30) seconds later. PID 1 gets no
default signal handling from the kernel, so the handlers below are what make SIGTERM work.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

log = logging.getLogger("worker")
stop = threading.Event()


def _request_stop(signum: int, _frame: FrameType | None) -> None:
    log.info("%s received: finishing the current unit of work", signal.Signals(signum).name)
    stop.set()


def work_once() -> int:
    """Do every queued job, one at a time; returns how many were done.

    A stop request lets the job in hand finish and leaves the rest queued for the next worker.
    """
    from app import db

    done = 0
    try:
        while not stop.is_set():
            job = db.take_job()
            if job is None:
                break
            done += 1
            log.info("job %d done (note %d)", job["id"], job["note_id"])
    except LookupError:
        log.info("tick (no database configured)")
    except Exception as error:  # a worker outlives a database restart
        log.warning("database unavailable: %s", type(error).__name__)
    else:
        log.info("tick: %d job(s) done", done)
    return done


class Heartbeat:
    """Touches a file for `entrykit healthcheck --file PATH --max-age S`."""

    def __init__(self, path: str | None) -> None:
        self.path = Path(path) if path else None

    def beat(self) -> None:
        if self.path is None:
            return
        try:
            self.path.touch()
        except OSError as error:  # a missing tmpfs shows as "unhealthy", not as a crash
            log.warning("heartbeat %s: %s", self.path, error)


def handle_message(raw: bytes | str) -> None:
    """One message from the Redis queue: ``{"note": "text"}`` stores a note."""
    from app import db

    try:
        message: Any = json.loads(raw)
        body = message["note"]
        if not isinstance(body, str):
            raise TypeError("note is not a string")
    except (ValueError, KeyError, TypeError) as error:
        log.warning("queue: dropped a malformed message (%s)", type(error).__name__)
        return
    note = db.add_note(body)
    log.info("queue: note %d stored", note["id"])


def redis_loop(url: str, queue: str, interval: float, heartbeat: Heartbeat) -> None:
    """Block on the Redis list a second at a time (so SIGTERM is seen within a second)."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=10, health_check_interval=30)
    log.info("consuming the Redis list %r", queue)
    next_db_poll = 0.0
    while not stop.is_set():
        heartbeat.beat()
        try:
            item = client.blpop([queue], timeout=1)
        except redis.RedisError as error:  # a Redis restart: retry, and stay unhealthy-free
            log.warning("redis unavailable: %s", type(error).__name__)
            stop.wait(1)
            continue
        if item is not None:
            handle_message(item[1])
            next_db_poll = 0.0  # the note queued a database job: do it now
        if time.monotonic() >= next_db_poll:
            work_once()
            next_db_poll = time.monotonic() + interval


def polling_loop(interval: float, heartbeat: Heartbeat) -> None:
    beat_every = max(0.5, float(os.environ.get("WORKER_HEARTBEAT_EVERY", "5")))
    next_work = 0.0
    while not stop.is_set():
        heartbeat.beat()
        if time.monotonic() >= next_work:
            work_once()
            next_work = time.monotonic() + interval
        stop.wait(min(beat_every, max(0.0, next_work - time.monotonic())))  # wakes on SIGTERM


def main() -> int:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _request_stop)
    interval = float(os.environ.get("WORKER_INTERVAL", "5"))
    heartbeat = Heartbeat(os.environ.get("WORKER_HEARTBEAT"))
    redis_url = os.environ.get("REDIS_URL")
    log.info("worker started (pid %d, every %.1f s)", os.getpid(), interval)
    started = time.monotonic()
    if redis_url:
        redis_loop(redis_url, os.environ.get("WORKER_QUEUE", "jobs"), interval, heartbeat)
    else:
        polling_loop(interval, heartbeat)
    log.info("worker stopped cleanly after %.1f s", time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
