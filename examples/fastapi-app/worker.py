"""A background worker started through entrykit: `entrykit python -m worker`.

It takes the jobs the API queues with each note (the `jobs` table) and marks them done.

entrykit execs it, so it is PID 1 in its container and receives `docker stop`'s (or
Kubernetes') SIGTERM itself. It finishes the unit of work in hand, then exits 0 well within the
grace period, instead of being killed mid-way by SIGKILL 10 (or 30) seconds later. PID 1 gets no
default signal handling from the kernel, so the handlers below are what make SIGTERM work.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from types import FrameType

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


def main() -> int:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _request_stop)
    interval = float(os.environ.get("WORKER_INTERVAL", "5"))
    log.info("worker started (pid %d, every %.1f s)", os.getpid(), interval)
    started = time.monotonic()
    while not stop.is_set():
        work_once()
        stop.wait(interval)  # wakes at once on SIGTERM
    log.info("worker stopped cleanly after %.1f s", time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
