"""Start-up commands: run one in its own process group, log its output, stop it cleanly.

Each command gets a session of its own (``start_new_session``), so that a signal or a kill
reaches every process it started, grandchildren included. While commands run they are kept in
a registry: when entrykit itself is stopped (SIGTERM, SIGINT, SIGQUIT), the thread that got the
signal calls :func:`stop_running`, which passes the signal on, waits up to ``kill_after``
seconds and then kills what is left, so that no process outlives entrykit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping
from typing import IO, Literal

from entrykit.errors import Cancelled, CommandFailed, CommandNotExecutable, CommandNotFound
from entrykit.launch import check_command
from entrykit.specs import CommandSpec

KILL_AFTER = 10.0  # seconds between passing a stop signal on and killing the group
_POLL_SECONDS = 0.05
_MAX_LINE = 65536  # a longer line is logged in pieces, so that memory stays bounded
_READER_JOIN_SECONDS = 1.0

Output = Literal["log", "inherit"]

# process group id -> its leader and the step whose lines it logs
_running: dict[int, tuple[subprocess.Popen[bytes], str]] = {}
_running_lock = threading.Lock()


def describe_status(returncode: int) -> str:
    """``status 3`` or ``signal SIGKILL``, from a Popen return code."""
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"status {returncode}"


def check_commands_found(specs: Iterable[CommandSpec], environ: Mapping[str, str]) -> None:
    """Fail now, before any step, when a command could not be started: a typo in a start-up
    command costs no migration, as one in CMD does not. Each is looked up on the PATH it will
    run with (``environ`` plus its own ``env``).

    Raises CommandFailed (exit 50) naming the command, as when it runs.
    """
    for spec in specs:
        try:
            check_command(spec.argv, {**environ, **dict(spec.env)})
        except CommandNotFound:
            raise CommandFailed(f"{_named(spec)}: not found") from None
        except CommandNotExecutable:
            raise CommandFailed(f"{_named(spec)}: not executable (permission denied)") from None


def shell_status(returncode: int) -> int:
    """The exit status a shell reports: 128+N for a command killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def run_command(
    spec: CommandSpec,
    environ: Mapping[str, str],
    *,
    step: str = "prestart",
    output: Output = "log",
    cancel: threading.Event | None = None,
    level: int = logging.INFO,
) -> int:
    """Run ``spec`` to its end and return its Popen return code (negative: killed by signal).

    The environment is ``environ`` plus ``spec.env``. With ``output="log"`` each line the
    command prints on stdout or stderr becomes an info line of ``step`` (``NAME | line``),
    redacted by the log formatter, and stdin is /dev/null; with ``"inherit"`` the command
    owns entrykit's stdin, stdout and stderr. Processes the command leaves behind in its
    group are killed when it ends. ``level`` is that of every line logged (a command polled
    every second logs at debug after its first run).

    Raises CommandFailed (exit 50) when the command is not found, not executable or runs past
    ``spec.timeout``; Cancelled when ``cancel`` was set (a stop signal: the thread that got
    it stops the command with :func:`stop_running`).
    """
    log = logging.getLogger(f"entrykit.{step}")
    env = {**environ, **dict(spec.env)}
    pipe = subprocess.PIPE if output == "log" else None
    log.log(level, "%s: %s", spec.name, shlex.join(spec.argv))
    started = time.monotonic()
    with _running_lock:  # registered before a signal can look for it
        try:
            process = subprocess.Popen(
                spec.argv,
                env=env,
                stdin=subprocess.DEVNULL if output == "log" else None,
                stdout=pipe,
                stderr=pipe,
                start_new_session=True,
            )
        except FileNotFoundError:
            raise CommandFailed(f"{_named(spec)}: not found") from None
        except PermissionError:
            raise CommandFailed(f"{_named(spec)}: not executable (permission denied)") from None
        except OSError as error:  # ENOEXEC (no #! line), EISDIR, ...
            raise CommandFailed(f"{_named(spec)}: cannot execute: {error.strerror}") from None
        _running[process.pid] = (process, step)
    readers = [
        _start_reader(stream, log, spec.name, level)
        for stream in (process.stdout, process.stderr)
        if stream is not None
    ]
    try:
        timed_out = _wait(process, spec.timeout, started)
    finally:
        _end_group(process)
        with _running_lock:
            _running.pop(process.pid, None)
        for reader in readers:
            reader.join(_READER_JOIN_SECONDS)
    seconds = time.monotonic() - started
    if timed_out:
        raise CommandFailed(f"{_named(spec)}: timed out after {spec.timeout:g} s (killed)")
    if cancel is not None and cancel.is_set():
        raise Cancelled(f"{spec.name} stopped ({describe_status(process.returncode)})")
    log.log(level, "%s: %s after %.2f s", spec.name, _ended(process.returncode), seconds)
    return process.returncode


def check_status(spec: CommandSpec, returncode: int) -> None:
    """CommandFailed (exit 50) naming the command unless it exited 0."""
    if returncode != 0:
        raise CommandFailed(f"{_named(spec)}: {_ended(returncode)}")


def stop_running(signum: int, kill_after: float = KILL_AFTER) -> None:
    """Pass ``signum`` to every running command's process group, wait up to ``kill_after``
    seconds for them to end, then kill the groups. A second stop signal while waiting
    (raised here by the caller's handler) cuts the wait short; the groups are killed all the
    same."""
    with _running_lock:
        running = list(_running.values())
    if not running:
        return
    logging.getLogger(f"entrykit.{running[0][1]}").info(
        "passing %s on to %s; killing %s after %g s",
        signal.Signals(signum).name,
        ", ".join(f"group {process.pid}" for process, _ in running),
        "them" if len(running) > 1 else "it",
        kill_after,
    )
    processes = [process for process, _ in running]
    try:
        for process in processes:
            _signal_group(process.pid, signum)
        deadline = time.monotonic() + kill_after
        for process in processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(max(0.0, deadline - time.monotonic()))
    finally:
        for process in processes:
            _end_group(process)


def _named(spec: CommandSpec) -> str:
    shown = shlex.join(spec.argv)
    return f"command {spec.name} ({shown})" if spec.name != spec.argv[0] else f"command {shown}"


def _ended(returncode: int) -> str:
    return "exited with status 0" if returncode == 0 else f"failed: {describe_status(returncode)}"


def _wait(process: subprocess.Popen[bytes], timeout: float | None, started: float) -> bool:
    """Wait for ``process``; True when it ran past ``timeout`` (it is killed then).

    A stop signal does not end the wait here: :func:`stop_running`, called by the thread that
    got the signal, passes it on, and the process ends.
    """
    while True:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(_POLL_SECONDS)
            return False
        if timeout is not None and time.monotonic() - started > timeout:
            _signal_group(process.pid, signal.SIGKILL)
            process.wait()
            return True


def _signal_group(pgid: int, signum: int) -> bool:
    """Send ``signum`` to the group; False when no process is left in it."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member switched user; the leader's own signal still counts
        return True
    return True


def _end_group(process: subprocess.Popen[bytes]) -> None:
    """Kill and reap what is left of the command's group once its leader is gone or killed.

    As PID 1 (or a subreaper) the orphaned grandchildren become our children: reap them,
    so that no zombie stays behind either.
    """
    if process.poll() is None:
        _signal_group(process.pid, signal.SIGKILL)
        process.wait()
    _reap_group(process.pid)
    if _signal_group(process.pid, signal.SIGKILL):
        logging.getLogger("entrykit.prestart").debug(
            "killed processes left behind in group %d", process.pid
        )
        time.sleep(_POLL_SECONDS)  # let the kernel deliver it before reaping
        _reap_group(process.pid)


def _reap_group(pgid: int) -> None:
    while True:
        try:
            pid, _ = os.waitpid(-pgid, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _start_reader(
    stream: IO[bytes], log: logging.Logger, name: str, level: int
) -> threading.Thread:
    thread = threading.Thread(
        target=_log_lines, args=(stream, log, name, level), name=f"{name} output", daemon=True
    )
    thread.start()
    return thread


def _log_lines(stream: IO[bytes], log: logging.Logger, name: str, level: int) -> None:
    """Each line of ``stream`` as a log line ``NAME | line`` (the formatter redacts it)."""
    with stream:
        while True:
            line = stream.readline(_MAX_LINE)
            if not line:
                return
            text = line.decode("utf-8", errors="replace").rstrip("\r\n")
            log.log(level, "%s | %s", name, text)
