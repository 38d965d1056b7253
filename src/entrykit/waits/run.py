"""Every configured dependency, waited on within one deadline."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from entrykit.errors import ConfigError
from entrykit.waits.http import wait_for_http
from entrykit.waits.postgres import wait_for_database
from entrykit.waits.retry import Clock
from entrykit.waits.tcp import wait_for_tcp

if TYPE_CHECKING:
    from entrykit.settings import Settings


def wait_for_dependencies(
    settings: Settings,
    *,
    cancel: threading.Event | None = None,
    clock: Clock = time.monotonic,
) -> None:
    """Wait for the database (when ``settings.should_wait_for_database``), every
    ``wait_tcp`` and every ``wait_http``, all within one deadline of ``settings.wait_timeout``.

    Raises ConfigError, DatabaseRefused, DependencyNotReady, Cancelled.
    """
    deadline = clock() + settings.wait_timeout
    if settings.should_wait_for_database:
        if not settings.database_url:
            raise ConfigError(
                "ENTRYKIT_WAIT=1 asks to wait for the database, "
                "but neither DATABASE_URL nor ENTRYKIT_DATABASE_URL is set"
            )
        wait_for_database(
            settings.database_url, deadline, cwd=settings.cwd, clock=clock, cancel=cancel
        )
    for address in settings.wait_tcp:
        wait_for_tcp(address, deadline, clock=clock, cancel=cancel)
    for url in settings.wait_http:
        wait_for_http(url, deadline, clock=clock, cancel=cancel)
