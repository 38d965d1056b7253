"""The run: secrets -> waits -> migrations and prefetch side by side -> exec.

Steps run in worker threads while the main thread only waits, so that SIGTERM, SIGINT and
SIGQUIT are handled within a fraction of a second even while a step is blocked in C code,
and even as PID 1 (where the kernel applies no default action).
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar

from entrykit.errors import (
    EXIT_COMMAND_FAILED,
    EXIT_MIGRATION_FAILED,
    EXIT_NOT_READY,
    EXIT_PREFETCH_FAILED,
    Cancelled,
    CommandFailed,
    CommandNotExecutable,
    CommandNotFound,
    ConfigError,
    EntrykitError,
    MigrationFailed,
    Stopped,
)
from entrykit.launch import (
    Exec,
    TargetUser,
    check_command,
    exec_command,
    resolve_user,
    switch_user,
    user_for_command,
)
from entrykit.logs import log_failure
from entrykit.preflight import check_settings
from entrykit.secretfiles import load_secrets
from entrykit.settings import Settings
from entrykit.specs import shell_line

if TYPE_CHECKING:
    from entrykit.specs import CommandSpec

STOP_SIGNALS = Stopped.STOP_SIGNALS
_POLL_SECONDS = 0.1

# What an unexpected exception inside a step exits with (the exit codes of docs/reference.md).
_FALLBACK_EXIT = {
    "wait": EXIT_NOT_READY,
    "migrate": EXIT_MIGRATION_FAILED,
    "prefetch": EXIT_PREFETCH_FAILED,
    "prestart": EXIT_COMMAND_FAILED,
    "once": EXIT_COMMAND_FAILED,
}

Step = Callable[[threading.Event], object]
_T = TypeVar("_T")


class Timings:
    """Seconds spent in each step, in the order they ran, for the line before exec."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.steps: dict[str, float] = {}

    def summary(self) -> str:
        parts = [f"{name} {seconds:.2f} s" for name, seconds in self.steps.items()]
        parts.append(f"total {time.monotonic() - self.started:.2f} s")
        return ", ".join(parts)


@contextmanager
def step(
    name: str, timings: Timings | None = None, cancel: threading.Event | None = None
) -> Iterator[None]:
    """Log a step's start, its end with its duration, or its failure with its exit code.

    Unexpected exceptions become an EntrykitError with the step's exit code, logged with
    their (redacted) traceback, so that a bug still exits with a documented code. A step
    that ends because ``cancel`` was set is not a failure of its own: one info line.
    """
    log = logging.getLogger(f"entrykit.{name}")
    log.info("start")
    started = time.monotonic()
    try:
        yield
    except Stopped:
        raise
    except EntrykitError as error:
        if isinstance(error, Cancelled) or (cancel is not None and cancel.is_set()):
            log.info("stopped after %.2f s", time.monotonic() - started)
            error.logged = True
            raise
        log_failure(log, error, time.monotonic() - started)
        raise
    except Exception as error:
        wrapped = EntrykitError(
            f"{type(error).__name__}: {error}", exit_code=_FALLBACK_EXIT.get(name, 1)
        )
        log.debug("unexpected error", exc_info=True)
        log_failure(log, wrapped, time.monotonic() - started)
        raise wrapped from error
    seconds = time.monotonic() - started
    if timings is not None:
        timings.steps[name] = seconds
    log.info("done in %.2f s", seconds, extra={"duration": round(seconds, 3)})


# Passed on to the running commands, as tini does; with none running, ignored (as they are
# by PID 1). Their default action would kill entrykit and leave its commands orphaned: every
# signal that ends a process by default, but the stop signals (above), those the kernel sends
# for a fault of entrykit's own (SEGV, FPE, ILL, BUS, ABRT, TRAP, SYS, which tini does not pass
# on either) and those Python ignores (PIPE, XFSZ). SIGXCPU too: tini passes it on, and
# entrykit, waiting, uses next to no CPU of its own.
PASS_ON_SIGNALS = (
    signal.SIGHUP,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGALRM,
    signal.SIGVTALRM,
    signal.SIGPROF,
    signal.SIGPWR,
    signal.SIGXCPU,
    signal.SIGIO,
    signal.SIGSTKFLT,
    *range(signal.SIGRTMIN, signal.SIGRTMAX + 1),
)


def _pass_on(signum: int, frame: object) -> None:
    commands = sys.modules.get("entrykit.commands")  # not imported: no command runs
    if commands is not None:
        commands.signal_running(signum)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """While inside, SIGTERM/SIGINT/SIGQUIT raise Stopped in the main thread, and the other
    signals that would end entrykit (``PASS_ON_SIGNALS``: SIGHUP, SIGUSR1, SIGALRM, ...) are
    passed on to the running commands."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, Stopped.raise_on_signal) for signum in STOP_SIGNALS}
    previous |= {signum: signal.signal(signum, _pass_on) for signum in PASS_ON_SIGNALS}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def run_steps(
    steps: Sequence[tuple[str, Step]],
    timings: Timings | None = None,
    *,
    kill_after: float | None = None,
) -> None:
    """Run steps side by side in worker threads; the first failure stops the others.

    Raises the failing step's EntrykitError, or Stopped when a stop signal arrives. The
    other steps see their ``cancel`` event set; they are daemon threads, so a process
    that exits does not wait for them. Commands they started are stopped first: the stop
    signal (or SIGTERM) is passed on, and after ``kill_after`` seconds (default 10) they are
    killed, so that no process outlives entrykit.
    """
    cancel = threading.Event()
    results: queue.Queue[tuple[str, BaseException | None]] = queue.Queue()

    def worker(name: str, body: Step) -> None:
        try:
            with step(name, timings, cancel):
                body(cancel)
        except BaseException as error:
            results.put((name, error))
        else:
            results.put((name, None))

    for name, body in steps:
        threading.Thread(target=worker, args=(name, body), name=name, daemon=True).start()
    pending = len(steps)
    try:
        while pending:
            try:
                _, error = results.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                continue
            pending -= 1
            if error is not None:
                raise error
    except BaseException as error:
        cancel.set()
        _cancel_statements()
        _stop_commands(error, kill_after)
        raise
    finally:
        cancel.set()


def _cancel_statements() -> None:
    # Only a run that migrated has imported the module. A migration statement still running
    # on the server would keep its locks after we exit: the next replica would wait for it.
    connection = sys.modules.get("entrykit.migrations.connection")
    if connection is not None:
        connection.cancel_running()


def _stop_commands(error: BaseException, kill_after: float | None) -> None:
    # Only a run that started a command has imported the module (and subprocess with it).
    commands = sys.modules.get("entrykit.commands")
    if commands is None:
        return
    signum = error.signum if isinstance(error, Stopped) else signal.SIGTERM
    if kill_after is None:
        commands.stop_running(signum)
    else:
        commands.stop_running(signum, kill_after)


def run_step(name: str, body: Callable[[threading.Event], _T]) -> _T:
    """One step in a worker thread, stopped by SIGTERM/SIGINT/SIGQUIT; returns its result.

    Raises the step's EntrykitError, or Stopped.
    """
    results: list[_T] = []
    with stop_on_signals():
        run_steps([(name, lambda cancel: results.append(body(cancel)))])
    return results[0]


def load_secrets_step(
    settings: Settings, timings: Timings | None = None
) -> tuple[Settings, dict[str, str]]:
    """Load the secrets into the environment (os.environ too) and re-read the settings.

    huggingface_hub and Alembic env.py files read os.environ, so they see what the
    command will get. Raises SecretError or ConfigError.
    """
    environ = dict(settings.environ)
    with step("secrets", timings):
        load_secrets(settings).apply(environ)
        settings = settings.with_environ(environ)
    os.environ.clear()
    os.environ.update(environ)
    return settings, environ


def prepare(
    settings: Settings, *, timings: Timings | None = None, kill_after: float | None = None
) -> tuple[Settings, dict[str, str]]:
    """Every step before the user switch and the start-up commands. Returns the settings
    re-read over the new environment and that environment (secrets in, ``*_FILE`` out),
    which the commands get.

    Raises the EntrykitError of the failing step, or Stopped on a stop signal.
    """
    timings = timings if timings is not None else Timings()
    settings, environ = load_secrets_step(settings, timings)
    check_settings(settings)  # after the secrets: a URL may come from one
    if settings.prestart:
        _check_prestart_found(settings, environ)
    if settings.migrate_command and settings.migrate in ("1", "wait"):
        _check_migrate_found(settings)
    if settings.waits_for_anything:
        run_steps([("wait", _wait_step(settings))], timings)

    side_by_side: list[tuple[str, Step]] = []
    if settings.migrate == "1":
        side_by_side.append(("migrate", _migrate_step(settings)))
    elif settings.migrate == "wait":
        side_by_side.append(("migrate", _wait_for_head_step(settings)))
    # A lock file alone is a list of repos too (what `entrykit prefetch --lock FILE` takes).
    prefetches = bool(settings.hf_models) or settings.hf_lockfile is not None
    if prefetches:
        side_by_side.append(("prefetch", _prefetch_step(settings)))
    if side_by_side:
        run_steps(side_by_side, timings, kill_after=kill_after)
    if prefetches and settings.hf_offline:
        environ["HF_HUB_OFFLINE"] = "1"
    return settings, environ


def _check_prestart_found(settings: Settings, environ: Mapping[str, str]) -> None:
    """Exit 50 now when a start-up command cannot be found: a typo there costs no migration."""
    from entrykit.commands import check_commands_found

    try:
        check_commands_found(settings.prestart, environ)
    except CommandFailed as error:
        log_failure(logging.getLogger("entrykit.prestart"), error)
        raise


def _check_migrate_found(settings: Settings) -> None:
    """Exit 30 now when the migrate or check command cannot be found: a typo costs no wait."""
    from entrykit.migrations.command import check_migrate_commands_found

    try:
        check_migrate_commands_found(settings)
    except MigrationFailed as error:
        log_failure(logging.getLogger("entrykit.migrate"), error)
        raise


def run(
    settings: Settings,
    command: Sequence[str] | None = None,
    *,
    execvpe: Exec = os.execvpe,
    kill_after: float | None = None,
) -> None:
    """``entrykit run``: the steps, the start-up commands, then exec ``command`` (returns
    only when there is none).

    ``kill_after`` is how long a start-up command may take to end after a stop signal was
    passed on to it (default 10 s). Raises the EntrykitError of the failing step (with its
    exit code), Stopped on a stop signal, CommandNotFound (127) or CommandNotExecutable (126).
    """
    timings = Timings()
    if settings.user:
        resolve_user(settings.user)  # an unknown user fails now, not after the migrations
    if command:
        check_command(command, settings.environ)  # and a typo in CMD costs no migration
    with stop_on_signals():
        settings, environ = prepare(settings, timings=timings, kill_after=kill_after)
        # Before the switch, as the migrations: ENTRYKIT_CHOWN then hands over what they
        # wrote, and no module they need is loaded after the user changed.
        if settings.prestart:
            run_steps(
                [("prestart", _prestart_step(settings, environ))], timings, kill_after=kill_after
            )
        if settings.user:
            with step("user"):
                switch_user(settings.user, [settings.resolve(p) for p in settings.chown], environ)
    log = logging.getLogger("entrykit.exec")
    if not command:
        log.info("no command given; steps done (%s)", timings.summary())
        return
    log.info("%s (%s)", shell_line(command), timings.summary())
    try:
        exec_command(command, environ, execvpe=execvpe)
    except EntrykitError as error:
        log_failure(log, error)
        raise


def _wait_step(settings: Settings) -> Step:
    def body(cancel: threading.Event) -> None:
        from entrykit.waits.run import wait_for_dependencies

        wait_for_dependencies(settings, cancel=cancel)

    return body


def _migrate_step(settings: Settings) -> Step:
    def body(cancel: threading.Event) -> None:
        from entrykit.migrations.run import migrate

        migrate(settings, cancel=cancel)

    return body


def _wait_for_head_step(settings: Settings) -> Step:
    def body(cancel: threading.Event) -> None:
        from entrykit.migrations.run import wait_for_head

        wait_for_head(settings, cancel=cancel)

    return body


def _prefetch_step(settings: Settings) -> Step:
    def body(cancel: threading.Event) -> None:
        from entrykit.hub.prefetch import prefetch_models

        prefetch_models(settings, cancel=cancel)

    return body


def _prestart_step(settings: Settings, environ: dict[str, str]) -> Step:
    """The start-up commands in order; a ``once`` command under the lock of its name."""

    def body(cancel: threading.Event) -> None:
        from entrykit.commands import check_status, run_command

        for spec in settings.prestart:
            if cancel.is_set():
                raise Cancelled("stopped before the next command")
            if spec.once:
                from entrykit.migrations.locks import named_lock

                with named_lock(settings, spec.name, cancel):
                    check_status(spec, run_command(spec, environ, cancel=cancel))
            else:
                check_status(spec, run_command(spec, environ, cancel=cancel))

    return body


def run_once(
    settings: Settings,
    name: str,
    command: Sequence[str],
    *,
    timeout: float | None = None,
    kill_after: float | None = None,
) -> int:
    """``entrykit once NAME -- CMD``: load the secrets, wait for the database, run ``command``
    while holding the cross-replica lock ``name``; return its exit status as a shell gives
    it (128+N when killed by signal N). The command owns stdin, stdout and stderr, and runs
    as ``ENTRYKIT_USER`` (entrykit, holding the lock, stays root).

    Raises ConfigError (no database, a bad name, an unknown user), SecretError,
    DatabaseRefused, DependencyNotReady, MigrationLockTimeout (31; LockLost too),
    CommandNotFound (127), CommandNotExecutable (126), CommandFailed (50: past ``timeout``),
    Stopped.
    """
    from entrykit.specs import CommandSpec, check_lock_name

    check_lock_name(name)
    if settings.user:
        resolve_user(settings.user)  # an unknown user fails now, before the wait
    spec = CommandSpec(name, tuple(command), once=True, timeout=timeout)
    with stop_on_signals():
        settings, environ = load_secrets_step(settings)
        if not settings.effective_migrate_url:
            raise ConfigError(
                f"entrykit once {name} needs a database for its cross-replica lock: "
                "set DATABASE_URL (or ENTRYKIT_MIGRATE_URL)"
            )
        check_command(command, environ)
        user = None
        if settings.user:
            chown = [settings.resolve(p) for p in settings.chown]
            user = user_for_command(settings.user, chown, environ)
        statuses: list[int] = []
        body = _once_step(settings, spec, environ, statuses, user)
        run_steps([("once", body)], kill_after=kill_after)
    return statuses[0]


def _once_step(
    settings: Settings,
    spec: CommandSpec,
    environ: dict[str, str],
    statuses: list[int],
    user: TargetUser | None,
) -> Step:
    def body(cancel: threading.Event) -> None:
        from entrykit.commands import SpawnFailed, run_command, shell_status
        from entrykit.migrations.locks import named_lock
        from entrykit.waits.postgres import wait_for_database

        url = settings.effective_migrate_url
        if url and settings.wait != "0":
            deadline = time.monotonic() + settings.wait_timeout
            wait_for_database(url, deadline, cwd=settings.cwd, cancel=cancel)
        with named_lock(settings, spec.name, cancel, step="once"):
            if user is not None:
                logging.getLogger("entrykit.once").info(
                    "running %s as uid %d gid %d (%s)",
                    spec.name,
                    user.uid,
                    user.gid,
                    user.name or settings.user,
                )
            try:
                returncode = run_command(
                    spec, environ, step="once", output="inherit", cancel=cancel, user=user
                )
            except SpawnFailed as error:  # the check passed, the file changed since: as a shell
                if error.errno == errno.ENOENT:
                    raise CommandNotFound(str(error)) from None
                raise CommandNotExecutable(str(error)) from None
        statuses.append(shell_status(returncode))

    return body
