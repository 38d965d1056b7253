"""Every configured dependency, waited on side by side within one deadline."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from entrykit.errors import Cancelled, ConfigError, DependencyNotReady
from entrykit.logs import add_url_secrets
from entrykit.settings import join_url_pieces
from entrykit.waits.check import Check, wait_until_ready
from entrykit.waits.http import http_check
from entrykit.waits.postgres import database_check
from entrykit.waits.retry import DEADLINE_GRACE, Clock
from entrykit.waits.schemes import check_for_url
from entrykit.waits.tcp import tcp_check
from entrykit.waits.urls import expand_url

if TYPE_CHECKING:
    from entrykit.settings import Settings

_POLL = 0.05  # how often the waiting thread looks at the signal's cancel event


def dependency_checks(settings: Settings) -> list[Check]:
    """The checks of every configured dependency: the database (when
    ``settings.should_wait_for_database``), ``wait_tcp``, ``wait_http`` and ``wait_for``
    (``${VAR}`` expanded from ``settings.environ``). Every URL password becomes a secret first.

    Raises ConfigError (bad or unknown URL, unset VAR, a client not installed).
    """
    urls = [expand_url(url, settings.environ) for url in join_url_pieces(settings.wait_for)]
    for url in [settings.database_url or "", *settings.wait_http, *urls]:
        add_url_secrets(url)  # an expanded ${VAR} brings a password settings never saw
    checks: list[Check | None] = []
    if settings.should_wait_for_database:
        if not settings.database_url:
            raise ConfigError(
                "ENTRYKIT_WAIT=1 asks to wait for the database, "
                "but neither DATABASE_URL nor ENTRYKIT_DATABASE_URL is set"
            )
        checks.append(database_check(settings.database_url, cwd=settings.cwd)[1])
    checks += [tcp_check(address) for address in settings.wait_tcp]
    checks += [http_check(url) for url in settings.wait_http]
    checks += [check_for_url(url, cwd=settings.cwd) for url in urls]
    return [check for check in checks if check is not None]


def wait_for_dependencies(
    settings: Settings,
    *,
    cancel: threading.Event | None = None,
    clock: Clock = time.monotonic,
) -> None:
    """Wait for every configured dependency (see :func:`dependency_checks`), side by side,
    within one deadline of ``settings.wait_timeout``. Nothing is waited on before every URL
    is known good.

    Raises ConfigError, DatabaseRefused (the first refusal stops the other waits),
    DependencyNotReady (naming every dependency not ready at the deadline), Cancelled.
    """
    # the clock starts before the checks are built: client imports count against it
    deadline = clock() + settings.wait_timeout
    wait_side_by_side(dependency_checks(settings), deadline, clock=clock, cancel=cancel)


def wait_side_by_side(
    checks: Sequence[Check],
    deadline: float,
    *,
    clock: Clock = time.monotonic,
    cancel: threading.Event | None = None,
) -> None:
    """Wait for every check in a thread of its own until ``deadline`` (and DEADLINE_GRACE,
    for tries started just before it), whatever the threads do.

    Raises the first failure that is not a timeout (and stops the others at once), else
    DependencyNotReady for all that timed out or are still trying; Cancelled when ``cancel``
    is set.
    """
    if len(checks) <= 1:
        for check in checks:
            wait_until_ready(check, deadline, clock=clock, cancel=cancel)
        return
    stop = threading.Event()  # set by a refusal or by ``cancel``: every wait ends
    finished = threading.Event()  # set whenever a wait ends
    failures: dict[int, BaseException] = {}

    def wait_for(index: int, check: Check) -> None:
        try:
            wait_until_ready(check, deadline, clock=clock, cancel=stop)
        except Cancelled:
            pass
        except BaseException as error:  # re-raised in the caller's thread
            failures[index] = error
            if not isinstance(error, DependencyNotReady):
                stop.set()
        finally:
            finished.set()

    threads = [
        threading.Thread(target=wait_for, args=item, name=f"wait-{item[0]}", daemon=True)
        for item in enumerate(checks)
    ]
    for thread in threads:
        thread.start()
    # Threads still in a try are left behind, daemonic, once the outcome is known: a
    # refusal, a signal or the deadline must not wait for them. The grace counts from the
    # deadline, or from the last thread's start when starting them all took longer (hundreds
    # of dependencies on a loaded machine): every wait's first try fits in it.
    started = clock()
    ends = max(deadline, started) + DEADLINE_GRACE
    while any(thread.is_alive() for thread in threads) and not stop.is_set():
        if cancel is not None and cancel.is_set():
            stop.set()
            raise Cancelled("stopped waiting for the dependencies")
        if clock() >= ends:
            stop.set()
            break
        finished.wait(_POLL)
        finished.clear()
    outcomes = dict(failures)  # a copy: threads left behind may still add to it
    for index in sorted(outcomes):
        if not isinstance(outcomes[index], DependencyNotReady):
            raise outcomes[index]
    for index, thread in enumerate(threads):
        if index not in outcomes and thread.is_alive():
            outcomes[index] = DependencyNotReady(
                f"{checks[index].what} not ready after {clock() - started:.1f} s (still trying)"
            )
    if outcomes:
        raise DependencyNotReady("; ".join(str(outcomes[index]) for index in sorted(outcomes)))
