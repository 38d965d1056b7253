"""Keeping a held replica lock's session alive, and saying so at once when it is lost anyway.

A session lock (a PostgreSQL advisory lock, MySQL's ``GET_LOCK``) lives as long as its
session, which sits idle while the command or migration runs. A server that ends idle
sessions (PostgreSQL's ``idle_session_timeout``, MySQL's ``wait_timeout``) would release it
silently, and another replica would take it and run at the same time. So while the lock is
held a thread runs a trivial query on the session, more often than the server's idle limit.
Where the session's socket is known, the thread also wakes when the server speaks first: a
backend ended by ``pg_terminate_backend``, a shutdown or the idle limit says so before it
closes, and the loss is logged at once rather than at the next query.

The lock's session is dedicated: only this thread uses it while the lock is held, and
:meth:`KeepAlive.stop` returns only once the thread is done with it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
from collections.abc import Callable
from typing import Any

KEEP_ALIVE_MOST = 30.0  # seconds between queries when the server ends no idle session
KEEP_ALIVE_LEAST = 0.05
STOP_WAIT_MOST = 10.0  # a query hanging longer (a network partition) counts as a lost session


def keep_alive_every(idle_limit: float | None) -> float:
    """Seconds between keep-alive queries: a third of the server's idle limit (seconds; None
    or 0: none), at most ``KEEP_ALIVE_MOST``."""
    if not idle_limit or idle_limit <= 0:
        return KEEP_ALIVE_MOST
    return max(KEEP_ALIVE_LEAST, min(KEEP_ALIVE_MOST, idle_limit / 3))


def describe_loss(error: BaseException) -> str:
    """The first line of what the driver said, which names the cause (``terminating connection
    due to administrator command``, ``idle-session timeout``, ``server closed the connection``)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class KeepAlive:
    """A thread running ``ping`` on a held lock's session every ``every`` seconds (and when
    the session's socket ``fileno`` turns readable) until :meth:`stop`. The first failure is
    logged as one ERROR line naming the lock (``label``) and ends the thread; ``lost`` then
    says why."""

    def __init__(
        self,
        ping: Callable[[], object],
        every: float,
        label: str,
        logger: logging.Logger,
        fileno: int | None = None,
    ) -> None:
        self.lost: str | None = None
        self.hung = False  # the thread is still in a query: the session must not be closed
        self._ping = ping
        self._every = every
        self._label = label
        self._logger = logger
        self._fileno = fileno
        self._stopping = threading.Event()
        self._wake = os.pipe() if fileno is not None else None
        self._thread = threading.Thread(target=self._run, name=f"keep-alive {label}", daemon=True)

    def start(self) -> KeepAlive:
        self._thread.start()
        return self

    def stop(self) -> str | None:
        """Stop the thread, wait for it to let go of the session; return why the lock was
        lost, or None while it is held. A query still hanging after ``STOP_WAIT_MOST`` seconds
        counts as lost, and sets ``hung``."""
        self._stopping.set()
        if self._wake is not None:
            os.write(self._wake[1], b"x")
        self._thread.join(STOP_WAIT_MOST)
        if self._thread.is_alive():
            self.hung = True
            self.report(f"the keep-alive query had no answer for over {STOP_WAIT_MOST:g} s")
            return self.lost  # the pipe stays open: the thread may still select on it
        if self._wake is not None:
            for fd in self._wake:
                with contextlib.suppress(OSError):
                    os.close(fd)
        return self.lost

    def report(self, reason: str) -> None:
        """Record that the lock was lost and log it, once."""
        if self.lost is not None:
            return
        self.lost = reason
        self._logger.error(
            "lost %s while holding it (%s): another replica may take it now and run at the "
            "same time as this one",
            self._label,
            reason,
        )

    def _run(self) -> None:
        while True:
            spoke = self._pause()
            if self._stopping.is_set():
                return
            try:
                self._ping()
            except Exception as error:
                self.report(describe_loss(error))
                return
            if spoke:  # a notice, not an ending: no tight loop on a chatty socket
                self._stopping.wait(min(self._every, 1.0))

    def _pause(self) -> bool:
        """Wait ``every`` seconds, or less when stopped; True when the server spoke first."""
        if self._fileno is None or self._wake is None:
            self._stopping.wait(self._every)
            return False
        try:
            ready, _, _ = select.select([self._fileno, self._wake[0]], [], [], self._every)
        except (OSError, ValueError):  # the socket is gone: the query will say why
            return True
        return self._fileno in ready


def postgres_keep_alive(session: Any, label: str, logger: logging.Logger) -> KeepAlive:
    """Keep a psycopg lock session alive: ``SELECT 1`` a third of ``idle_session_timeout``
    apart (read now, from the server; PostgreSQL 14+), else every 30 s; waking when the
    server speaks first. Started."""
    idle: float | None = None
    with contextlib.suppress(Exception):
        row = session.execute(
            "SELECT setting::float8 / 1000 FROM pg_settings WHERE name = 'idle_session_timeout'"
        ).fetchone()
        idle = float(row[0]) if row else None
    fileno = getattr(session, "fileno", None)  # psycopg's; a stand-in session may lack it
    return KeepAlive(
        lambda: session.execute("SELECT 1").fetchone(),
        keep_alive_every(idle),
        label,
        logger,
        fileno() if callable(fileno) else None,
    ).start()


def mysql_keep_alive(session: Any, label: str, logger: logging.Logger) -> KeepAlive:
    """Keep a PyMySQL lock session alive: ``SELECT 1`` a third of the session's
    ``wait_timeout`` apart (8 h by default), at most every 30 s. Started."""

    def value(query: str) -> object:
        with session.cursor() as cursor:
            cursor.execute(query)
            row = cursor.fetchone()
        return row[0] if row else None

    idle: float | None = None
    with contextlib.suppress(Exception):
        idle = float(str(value("SELECT @@SESSION.wait_timeout")))
    return KeepAlive(lambda: value("SELECT 1"), keep_alive_every(idle), label, logger).start()
