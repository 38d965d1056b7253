"""Other migrators: ``ENTRYKIT_MIGRATE_COMMAND`` (``manage.py migrate``, ``flask db upgrade``)
run under the replica lock, with ``ENTRYKIT_MIGRATE_CHECK_COMMAND`` for the lock-free answer
"nothing to do".

1. The check command runs first, without any lock: exit 0 means the database is at head.
2. Otherwise the replica takes the migration lock. Free at once, it runs the migrate command.
   If it had to wait, another replica was migrating: it lets the lock go and asks the check
   command again, side by side with the other waiters, and only if that still reports
   pending migrations takes the lock once more, checks under it and migrates.
Without a check command every start takes the lock and runs the migrate command, one replica
after the other. The commands' output becomes log lines of step ``migrate``.

Both commands are looked up on PATH before anything runs, so a typo costs no database wait.
A run of the check command is bounded by ``ENTRYKIT_WAIT_TIMEOUT`` (what is left of it while
the database wait is on): a check that hangs is killed, not waited for.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from entrykit.commands import check_commands_found, describe_status, run_command
from entrykit.errors import (
    Cancelled,
    CommandFailed,
    ConfigError,
    MigrationFailed,
)
from entrykit.migrations.head_wait import poll_until_migrated
from entrykit.migrations.locks import migration_lock
from entrykit.specs import CommandSpec, split_command
from entrykit.waits.retry import Clock, NotReadyYet, Sleep

if TYPE_CHECKING:
    from entrykit.database import DatabaseTarget
    from entrykit.migrations.upgrade import MigrateOutcome
    from entrykit.settings import Settings

log = logging.getLogger("entrykit.migrate")

MIGRATE_NAME = "migrate-command"
CHECK_NAME = "check-command"
CHECK_POLL_MOST = 1.0  # ENTRYKIT_MIGRATE=wait: at most 1 s between runs of the check command
CHECK_TIMEOUT_LEAST = 0.1  # a check started at the deadline still gets one short run


def migrate_spec(settings: Settings) -> CommandSpec | None:
    """``ENTRYKIT_MIGRATE_COMMAND`` as a command spec, or None when Alembic migrates."""
    if not settings.migrate_command:
        return None
    return CommandSpec(MIGRATE_NAME, split_command(settings.migrate_command))


def check_spec(settings: Settings) -> CommandSpec | None:
    """``ENTRYKIT_MIGRATE_CHECK_COMMAND`` as a command spec, or None."""
    if not settings.migrate_check_command:
        return None
    return CommandSpec(CHECK_NAME, split_command(settings.migrate_check_command))


def check_migrate_commands_found(settings: Settings) -> None:
    """Fail now, before any wait, when a command the migrate step runs cannot be started: the
    check command, and (unless ``ENTRYKIT_MIGRATE=wait``, which only checks) the migrate
    command. Each is looked up on the PATH of ``settings.environ``; without a migrate command
    there is nothing to look up.

    Raises MigrationFailed (exit 30) naming the command.
    """
    checker = check_spec(settings)
    if settings.migrate == "wait":
        _check_found([checker], settings.environ)
    else:
        _check_found([migrate_spec(settings), checker], settings.environ)


class CheckTimedOut(MigrationFailed):
    """A run of the check command went past its time limit and was killed (exit 30; in
    ``ENTRYKIT_MIGRATE=wait`` it counts as not at head)."""


def migrate_with_command(
    settings: Settings,
    *,
    check: bool = False,
    cancel: threading.Event | None = None,
    clock: Clock = time.monotonic,
) -> MigrateOutcome:
    """Bring the database to head with ``ENTRYKIT_MIGRATE_COMMAND``, once across replicas.

    With ``check``, only the check command runs: ``pending`` is empty when it exits 0.
    The commands get ``settings.environ`` (the loaded secrets). Raises ConfigError (no
    database for the lock, ``check`` without a check command), DatabaseRefused,
    DependencyNotReady, MigrationFailed (a command not found, failed, or the check command
    timed out: exit 30), MigrationLockTimeout, LockLost, Cancelled.
    """
    from entrykit.migrations.upgrade import MigrateOutcome

    command = migrate_spec(settings)
    if command is None:
        raise ConfigError("ENTRYKIT_MIGRATE_COMMAND is not set")
    checker = check_spec(settings)
    if check and checker is None:
        raise ConfigError(
            "migrate --check with ENTRYKIT_MIGRATE_COMMAND needs ENTRYKIT_MIGRATE_CHECK_COMMAND"
        )
    _check_found([checker] if check else [command, checker], settings.environ)
    if checker is not None:  # a check that hangs is not waited for
        checker = checker._replace(timeout=settings.wait_timeout)
    environ = settings.environ
    if checker is None:
        target = _wait_for_database(settings, clock() + settings.wait_timeout, cancel, clock)
    else:
        target, at_head = _check_while_waiting(checker, settings, cancel, clock)
        if at_head:
            log.info("database at head (%s exited 0): nothing to do", CHECK_NAME)
            return MigrateOutcome()
        if check:
            return MigrateOutcome(pending=(f"{CHECK_NAME} reports pending migrations",))
    lock_wait = 0.0
    for last_turn in (False, True):
        with migration_lock(target, settings, cancel) as waited:
            lock_wait += waited
            # Free at once: nobody was migrating. One that took and let go of the lock between
            # our check and now leaves the migrate command nothing to do, which costs what
            # asking the check again would; so it is not asked.
            if checker is None or not waited:
                _migrate(command, environ, target, cancel)
                return MigrateOutcome(applied=(str(command),), lock_wait=lock_wait)
            if last_turn:
                if not _at_head(checker, environ, cancel):
                    _migrate(command, environ, target, cancel)
                    return MigrateOutcome(applied=(str(command),), lock_wait=lock_wait)
                break
        # We waited while another replica migrated: ask the check command without the lock,
        # side by side with the other replicas that waited, not one after the other under it.
        if _at_head(checker, environ, cancel):
            break
    log.info("another replica migrated the database meanwhile")
    return MigrateOutcome(lock_wait=lock_wait)


def wait_for_head_with_command(
    settings: Settings,
    *,
    cancel: threading.Event | None = None,
    clock: Clock = time.monotonic,
    sleep: Sleep | None = None,
) -> None:
    """``ENTRYKIT_MIGRATE=wait`` with a command migrator: run the check command until it
    exits 0, at most 1 s apart, within ``wait_timeout``.

    Raises ConfigError (no check command), DatabaseRefused, DependencyNotReady (not at head
    by the deadline, a run of the check command still going at the deadline included: it is
    killed), MigrationFailed (the check command not found), Cancelled.
    """
    checker = check_spec(settings)
    if checker is None:
        raise ConfigError(
            "ENTRYKIT_MIGRATE=wait with ENTRYKIT_MIGRATE_COMMAND needs "
            "ENTRYKIT_MIGRATE_CHECK_COMMAND, to know when the database is at head"
        )
    _check_found([checker], settings.environ)
    deadline = clock() + settings.wait_timeout
    if settings.effective_migrate_url:
        _wait_for_database(settings, deadline, cancel, clock)
    shown = f"migrations ({checker})"

    runs = [0]

    def attempt(timeout: float) -> None:
        runs[0] += 1
        level = logging.INFO if runs[0] == 1 else logging.DEBUG
        try:  # a check still running at the deadline is killed there
            at_head = _at_head(checker, settings.environ, cancel, level, deadline - clock())
        except CheckTimedOut as error:
            raise NotReadyYet(str(error)) from None
        if not at_head:
            raise NotReadyYet(
                f"{CHECK_NAME} reports pending migrations "
                "(another replica or a migration Job applies them)"
            )

    poll_until_migrated(
        shown,
        attempt,
        deadline=deadline,
        most=CHECK_POLL_MOST,
        logger=log,
        clock=clock,
        sleep=sleep,
        cancel=cancel,
    )


def _wait_for_database(
    settings: Settings,
    deadline: float,
    cancel: threading.Event | None,
    clock: Clock,
    connect: Callable[[str, float], None] | None = None,
) -> DatabaseTarget:
    from entrykit.waits.postgres import connect_and_select, wait_for_database

    url = settings.effective_migrate_url
    if not url:
        raise ConfigError(
            "ENTRYKIT_MIGRATE_COMMAND runs under the replica lock, which needs the database: "
            "set DATABASE_URL (or ENTRYKIT_MIGRATE_URL)"
        )
    return wait_for_database(
        url,
        deadline,
        cwd=settings.cwd,
        clock=clock,
        cancel=cancel,
        connect=connect or connect_and_select,
    )


def _check_while_waiting(
    checker: CommandSpec, settings: Settings, cancel: threading.Event | None, clock: Clock
) -> tuple[DatabaseTarget, bool]:
    """The check command and the database wait side by side (the command's own start-up, a
    Django or Flask process, hides the wait's); returns the target and whether the check
    command says the database is at head. A failed check that ran before the database
    answered is asked again, once the database answers.

    The check is killed at the wait's deadline. Raises what the wait raises (it wins over
    the check's answer), and MigrationFailed (CheckTimedOut: still running at the deadline).
    """
    from entrykit.waits.postgres import connect_and_select

    deadline = clock() + settings.wait_timeout
    tries: list[float] = []
    waited: list[DatabaseTarget | BaseException] = []

    def connect(conninfo: str, timeout: float) -> None:
        tries.append(timeout)
        connect_and_select(conninfo, timeout)

    def wait() -> None:
        try:
            waited.append(_wait_for_database(settings, deadline, cancel, clock, connect))
        except BaseException as error:
            waited.append(error)

    waiter = threading.Thread(target=wait, name="migrate wait", daemon=True)
    waiter.start()
    try:
        at_head = _at_head(checker, settings.environ, cancel, timeout=deadline - clock())
    finally:
        waiter.join()  # and when the check failed, the wait's own failure comes first
        if isinstance(waited[0], BaseException):
            raise waited[0]
    if not at_head and len(tries) > 1:
        log.info("%s ran before the database answered: asking it again", CHECK_NAME)
        at_head = _at_head(checker, settings.environ, cancel)
    return waited[0], at_head


def _at_head(
    checker: CommandSpec,
    environ: Mapping[str, str],
    cancel: threading.Event | None,
    level: int = logging.INFO,
    timeout: float | None = None,
) -> bool:
    """Whether the check command exits 0; killed after ``timeout`` seconds when given (else
    its own), which raises CheckTimedOut."""
    if timeout is not None:
        checker = checker._replace(timeout=round(max(CHECK_TIMEOUT_LEAST, timeout), 1))
    return _run(checker, environ, cancel, check=False, level=level) == 0


def _check_found(specs: list[CommandSpec | None], environ: Mapping[str, str]) -> None:
    try:
        check_commands_found([spec for spec in specs if spec is not None], environ)
    except CommandFailed as error:
        raise MigrationFailed(str(error)) from None


def _migrate(
    command: CommandSpec,
    environ: Mapping[str, str],
    target: DatabaseTarget,
    cancel: threading.Event | None,
) -> None:
    """Run the migrate command; stopped, its sessions on a PostgreSQL server end with it.

    libpq-based drivers (psycopg, psycopg2: Django, Flask-Migrate) take the session's name
    from ``PGAPPNAME``; a command that names its sessions itself (or a ``PGAPPNAME`` set by
    the user) is only stopped, not ended.
    """
    import os
    import socket

    from entrykit.migrations.connection import end_sessions_on_stop

    if environ.get("PGAPPNAME"):  # the user's name may be shared by other processes
        _run(command, environ, cancel)
        return
    # Unique per replica: in containers every entrykit may be PID 1.
    name = f"entrykit migrate {socket.gethostname()} {os.getpid()}"[:63]
    with end_sessions_on_stop(target, name, cancel):
        _run(command, {**environ, "PGAPPNAME": name}, cancel)


def _run(
    spec: CommandSpec,
    environ: Mapping[str, str],
    cancel: threading.Event | None,
    *,
    check: bool = True,
    level: int = logging.INFO,
) -> int:
    """Run a migrate or check command; a failure to start it, or (``check``) a non-zero
    exit, is MigrationFailed naming the command; past ``spec.timeout``, CheckTimedOut."""
    if cancel is not None and cancel.is_set():
        raise Cancelled(f"stopped before {spec.name}")
    started = time.monotonic()
    try:
        returncode = run_command(spec, environ, step="migrate", cancel=cancel, level=level)
    except CommandFailed as error:
        if spec.timeout is not None and time.monotonic() - started >= spec.timeout:
            raise CheckTimedOut(f"{error}: it gets at most ENTRYKIT_WAIT_TIMEOUT") from None
        raise MigrationFailed(str(error)) from None
    if check and returncode != 0:
        raise MigrationFailed(f"{spec.name} {spec} failed: {describe_status(returncode)}")
    return returncode
