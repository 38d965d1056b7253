"""Start-up commands: run one in its own process group, log its output, stop it cleanly.

Each command gets a session of its own (``start_new_session``), so that a signal or a kill
reaches every process it started, grandchildren included. While commands run they are kept in
a registry: when entrykit itself is stopped (SIGTERM, SIGINT, SIGQUIT), the thread that got the
signal calls :func:`stop_running`, which passes the signal on, waits up to ``kill_after``
seconds and then kills what is left, so that no process outlives entrykit.
"""

from __future__ import annotations

import codecs
import contextlib
import logging
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping
from typing import IO, Literal

from entrykit import logs
from entrykit.errors import Cancelled, CommandFailed, CommandNotExecutable, CommandNotFound
from entrykit.launch import TargetUser, check_command
from entrykit.specs import CommandSpec, shell_line

KILL_AFTER = 10.0  # seconds between passing a stop signal on and killing the group
_POLL_SECONDS = 0.05
_REAP_SECONDS = 0.5  # as PID 1, how often orphans' zombies are looked for while a command runs
_PIECE = 65536  # characters: a longer line is logged in pieces, so that memory stays bounded
_READ_BYTES = 65536
# Once the command has ended, its output is read until the pipe has been silent this long: a
# backlog (its last lines, the ones saying what went wrong) is all logged, while a process
# that left the command's group (a session of its own) and holds the pipe open costs ~1 s.
_SILENT_SECONDS = 1.0
# ... and at most this long, so that such a process writing on and on cannot hold entrykit.
_DRAIN_MOST_SECONDS = 10.0
_NOTICE_END_SECONDS = 0.25  # how often the reader looks whether the command has ended

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
        except (CommandNotFound, CommandNotExecutable) as error:
            raise CommandFailed(f"{_named(spec)}: {_reason(error, spec.argv[0])}") from None


class SpawnFailed(CommandFailed):
    """The command could not be started (exit 50 for a start-up command); ``errno`` says why,
    so that ``entrykit once`` can exit as a shell would (127 for ENOENT, else 126)."""

    def __init__(self, message: str, errno: int | None) -> None:
        super().__init__(message)
        self.errno = errno


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
    user: TargetUser | None = None,
) -> int:
    """Run ``spec`` to its end and return its Popen return code (negative: killed by signal).

    The environment is ``environ`` plus ``spec.env``. With ``output="log"`` each line the
    command prints on stdout or stderr (one pipe for both, so lines keep the order written)
    becomes an info line of ``step`` (``NAME | line``), redacted by the log formatter, and
    stdin is /dev/null; with ``"inherit"`` the command owns entrykit's stdin, stdout and
    stderr. Processes the command leaves behind in its group are killed when it ends; its
    output is read until the pipe is silent (see ``_SILENT_SECONDS``). ``level`` is that of
    every line logged (a command polled every second logs at debug after its first run).
    With ``user`` it runs as that user, its groups and group (HOME and USER are the caller's
    to set in ``environ``).

    Raises CommandFailed (exit 50) when the command runs past ``spec.timeout``, SpawnFailed
    (a CommandFailed, exit 50) when it is not found or not executable; Cancelled when
    ``cancel`` was set (a stop signal: the thread that got it stops the command with
    :func:`stop_running`).
    """
    log = logging.getLogger(f"entrykit.{step}")
    env = {**environ, **dict(spec.env)}
    logged = output == "log"
    log.log(level, "%s: %s", spec.name, shell_line(spec.argv))
    started = time.monotonic()
    with _running_lock:  # registered before a signal can look for it
        try:
            process = subprocess.Popen(
                spec.argv,
                env=env,
                stdin=subprocess.DEVNULL if logged else None,
                stdout=subprocess.PIPE if logged else None,
                stderr=subprocess.STDOUT if logged else None,
                start_new_session=True,
                user=user.uid if user else None,
                group=user.gid if user else None,
                extra_groups=list(user.groups) if user else None,
            )
        except FileNotFoundError as error:
            raise SpawnFailed(f"{_named(spec)}: not found", error.errno) from None
        except PermissionError as error:
            message = f"{_named(spec)}: not executable (permission denied)"
            raise SpawnFailed(message, error.errno) from None
        except OSError as error:  # ENOEXEC (no #! line), EISDIR, ...
            message = f"{_named(spec)}: cannot execute: {error.strerror}"
            raise SpawnFailed(message, error.errno) from None
        _running[process.pid] = (process, step)
    ended = threading.Event()
    reader = None
    if process.stdout is not None:
        reader = _start_reader(process.stdout, _LineLogger(log, spec.name, level), ended)
    try:
        timed_out = _wait(process, spec.timeout, started)
    finally:
        _end_group(process)
        with _running_lock:
            _running.pop(process.pid, None)
        ended.set()
        if reader is not None:  # it stops by itself; the bound is for a blocked log stream
            reader.join(_DRAIN_MOST_SECONDS + 2 * _NOTICE_END_SECONDS)
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


def signal_running(signum: int) -> None:
    """Pass ``signum`` on to every running command's process group, as tini passes signals
    on to its child; nothing happens when no command runs. (For SIGHUP, SIGUSR1, SIGUSR2:
    the stop signals go through :func:`stop_running`.)"""
    with _running_lock:
        groups = [process.pid for process, _ in _running.values()]
    for pgid in groups:
        _signal_group(pgid, signum)


def _reason(error: CommandNotFound | CommandNotExecutable, program: str) -> str:
    """What check_command found, without the program's name: ``not found``, ``bad interpreter
    /x``, ``not executable (permission denied)``, ``cannot execute: Exec format error ...``."""
    text = str(error)
    if text.startswith(f"{program}: "):
        return text[len(program) + 2 :]
    if isinstance(error, CommandNotFound):
        return "not found"
    return "not executable (permission denied)"


def _named(spec: CommandSpec) -> str:
    line = shell_line(spec.argv)
    return f"command {spec.name} ({line})" if spec.name != spec.argv[0] else f"command {line}"


def _ended(returncode: int) -> str:
    return "exited with status 0" if returncode == 0 else f"failed: {describe_status(returncode)}"


def _wait(process: subprocess.Popen[bytes], timeout: float | None, started: float) -> bool:
    """Wait for ``process``; True when it ran past ``timeout`` (it is killed then).

    A stop signal does not end the wait here: :func:`stop_running`, called by the thread that
    got the signal, passes it on, and the process ends.
    """
    reap_at = time.monotonic() + _REAP_SECONDS
    while True:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(_POLL_SECONDS)
            return False
        if os.getpid() == 1 and time.monotonic() >= reap_at:
            _reap_orphans()
            reap_at = time.monotonic() + _REAP_SECONDS
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


def _reap_orphans() -> None:
    """As PID 1, reap the zombies of orphans (a command's grandchildren whose parent did not
    wait for them) while the command still runs, as tini does: a long migration or ``once``
    Job would pile them up. Never a command of ours: its Popen must get its status."""
    with _running_lock:  # a command is registered as it starts, under this lock
        ours = set(_running)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in ours:
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="ascii", errors="replace") as file:
                state, ppid = file.read().rpartition(")")[2].split()[:2]  # after the name
        except (OSError, ValueError):
            continue  # gone meanwhile
        if state == "Z" and ppid == "1":
            with contextlib.suppress(ChildProcessError):
                os.waitpid(int(entry.name), os.WNOHANG)


def _reap_group(pgid: int) -> None:
    while True:
        try:
            pid, _ = os.waitpid(-pgid, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _start_reader(
    stream: IO[bytes], lines: _LineLogger, ended: threading.Event
) -> threading.Thread:
    thread = threading.Thread(
        target=_log_output, args=(stream, lines, ended), name=f"{lines.name} output", daemon=True
    )
    thread.start()
    return thread


def _log_output(stream: IO[bytes], lines: _LineLogger, ended: threading.Event) -> None:
    """Log what ``stream`` carries until its end or, once ``ended`` is set (the command and its
    group are gone), until it has been silent for ``_SILENT_SECONDS`` (at most
    ``_DRAIN_MOST_SECONDS`` in all): only a process that left the group can still hold it."""
    fd = stream.fileno()
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # keeps split characters
    ended_at: float | None = None
    last_read = 0.0
    with stream:
        while True:
            now = time.monotonic()
            if ended_at is None and ended.is_set():
                ended_at = now
            wait = _NOTICE_END_SECONDS
            if ended_at is not None:
                silent_from = max(ended_at, last_read)
                wait = min(silent_from + _SILENT_SECONDS, ended_at + _DRAIN_MOST_SECONDS) - now
                if wait <= 0:
                    break
            if not poller.poll(wait * 1000):
                continue
            chunk = os.read(fd, _READ_BYTES)
            lines.feed(decoder.decode(chunk, final=not chunk))
            last_read = time.monotonic()  # after logging it: silence is time the pipe was idle
            if not chunk:
                break
    lines.feed(decoder.decode(b"", final=True))
    lines.end()


class _LineLogger:
    """Text in, log lines ``NAME | line`` out. A line over ``_PIECE`` characters is logged in
    pieces; the formatter redacts each piece alone, so no piece may end inside a secret."""

    def __init__(self, log: logging.Logger, name: str, level: int) -> None:
        self.name = name
        self._log = log
        self._level = level
        self._parts: list[str] = []  # the line so far, as read (joined only to cut it)
        self._size = 0

    def feed(self, text: str) -> None:
        *ended, rest = text.split("\n")
        for line in ended:
            self._log_line("".join([*self._parts, line]).rstrip("\r"))
            self._parts, self._size = [], 0
        if not rest:
            return
        self._parts.append(rest)
        self._size += len(rest)
        # A piece is cut only once every secret that could straddle the cut is wholly read.
        reach = _PIECE + max(logs.longest_secret() - 1, 0)
        if self._size > reach:
            rest = self._log_pieces("".join(self._parts), reach)
            self._parts, self._size = ([rest] if rest else []), len(rest)

    def end(self) -> None:
        """Log the last line when the output did not end with a newline."""
        if self._parts:
            self._log_line("".join(self._parts))
            self._parts, self._size = [], 0

    def _log_line(self, line: str) -> None:
        rest = self._log_pieces(line, _PIECE)
        if rest or rest == line:  # an empty line is logged; an empty last piece is not
            self._log.log(self._level, "%s | %s", self.name, rest)

    def _log_pieces(self, text: str, reach: int) -> str:
        """Log pieces of ``text`` while it is longer than ``reach``; what is left."""
        while len(text) > reach:
            cut = _piece_end(text)
            self._log.log(self._level, "%s | %s", self.name, text[:cut])
            text = text[cut:]
        return text


def _piece_end(text: str) -> int:
    """Where the next piece of ``text`` ends: after ``_PIECE`` characters, or where a secret
    straddling that point starts (where it ends, when it starts the piece).

    Sound when ``text`` runs ``logs.longest_secret() - 1`` characters past ``_PIECE`` or is
    the whole rest of the line: every occurrence starting before the cut ends inside ``text``
    then, so it is part of a span found here, and no span contains the cut.
    """
    # Only occurrences that start before the cut matter; they all end within this window.
    window = text[: _PIECE + max(logs.longest_secret() - 1, 0)]
    for start, end in logs.secret_spans(window):
        if start >= _PIECE:
            break
        if end > _PIECE:
            return start if start > 0 else end
    return _PIECE
