"""The last step: become the configured user, reset signals and exec the command.

After ``execvpe`` the command has entrykit's PID (PID 1 in a container) and its stdio, and
no entrykit process is left behind.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import pwd
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

from entrykit.errors import CommandNotExecutable, CommandNotFound, ConfigError, EntrykitError

log = logging.getLogger("entrykit.user")

# Python itself ignores these at start-up; a shell-started command expects the default.
_PYTHON_CHANGED = ("SIGPIPE", "SIGXFSZ", "SIGINT")

Exec = Callable[[str, list[str], dict[str, str]], object]

EXIT_WRITE_ERROR = 1  # stdout cannot be written, as coreutils exit ("write error: ...")


class TargetUser(NamedTuple):
    """Who the command runs as: ids, supplementary groups and the passwd HOME and name."""

    uid: int
    gid: int
    groups: tuple[int, ...]
    name: str | None
    home: str


def resolve_user(spec: str) -> TargetUser:
    """``user``, ``user:group``, ``uid`` or ``uid:gid`` -> ids, as gosu resolves them.

    Raises ConfigError for an unknown user or group.
    """
    user_part, _, group_part = spec.partition(":")
    entry = _passwd_entry(user_part)
    if entry is None:
        if not user_part.isdigit():
            raise ConfigError(f"ENTRYKIT_USER: unknown user {user_part!r}")
        uid, gid, name, home = int(user_part), int(user_part), None, "/"
    else:
        uid, gid, name, home = entry.pw_uid, entry.pw_gid, entry.pw_name, entry.pw_dir
    if group_part:
        gid = _group_id(group_part)
    # gosu: an explicit group replaces the supplementary list; otherwise take the user's.
    if name is not None and not group_part:
        groups = tuple(sorted(set(os.getgrouplist(name, gid))))
    else:
        groups = (gid,)
    return TargetUser(uid, gid, groups, name, home or "/")


def switch_user(spec: str, chown: Sequence[Path], environ: dict[str, str]) -> TargetUser | None:
    """Hand ``chown`` folders to the user, then become it; sets HOME and USER in ``environ``.

    Not root: skipped with one info line (the orchestrator already chose the user).
    Raises ConfigError for an unknown user or group.
    """
    target = user_for_command(spec, chown, environ)
    if target is None:
        return None
    os.setgroups(list(target.groups))
    os.setgid(target.gid)
    os.setuid(target.uid)
    log.info("running as uid %d gid %d (%s)", target.uid, target.gid, target.name or spec)
    return target


def user_for_command(
    spec: str, chown: Sequence[Path], environ: dict[str, str]
) -> TargetUser | None:
    """Everything of the switch to ``spec`` but the switch itself, for a command that a child
    process runs as that user (``entrykit once``): hand ``chown`` folders to it, set HOME and
    USER in ``environ``; return who to run as. Not root: None, with one info line.

    Raises ConfigError for an unknown user or group, or a folder that cannot be handed over.
    """
    target = resolve_user(spec)
    if os.geteuid() != 0:
        log.info("ENTRYKIT_USER=%s ignored: not running as root (uid %d)", spec, os.geteuid())
        return None
    for folder in chown:
        _chown_tree(folder, target.uid, target.gid)
    environ["HOME"] = target.home
    if target.name is not None:
        environ["USER"] = target.name
    return target


def flush_stdio() -> None:
    """Flush stdout and stderr; a closed (None) or broken stream must not stop us."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            if stream is not None:
                stream.flush()


class CheckedStdout:
    """sys.stdout for the commands that print: a write that fails (``> /dev/full``, a closed
    stdout, a broken pipe) is an EntrykitError with exit 1, reported in one line as
    coreutils do ("write error: No space left on device"), never a traceback. ``buffer``
    is checked the same way, for writers (click among them) that write bytes to it."""

    def __init__(self, stream: Any, owner: CheckedStdout | None = None) -> None:
        self._stream = stream
        self._owner = owner if owner is not None else self
        self.failure: str | None = None if stream is not None else "stdout is closed"

    @property
    def buffer(self) -> CheckedStdout:
        return CheckedStdout(getattr(self._stream, "buffer", None), self._owner)

    def write(self, data: Any) -> int:
        written = self._checked(lambda stream: stream.write(data))
        return written if isinstance(written, int) else 0

    def flush(self) -> None:
        self._checked(lambda stream: stream.flush())

    def __getattr__(self, name: str) -> object:
        return getattr(self._stream, name)

    def _checked(self, operation: Callable[[Any], object]) -> object:
        failure = self.failure or self._owner.failure
        if failure is not None:
            raise EntrykitError(f"write error: {failure}", exit_code=EXIT_WRITE_ERROR)
        try:
            return operation(self._stream)
        except (OSError, ValueError) as error:
            # What was buffered is lost: every later write or flush fails the same way.
            self._owner.failure = getattr(error, "strerror", None) or str(error)
            raise EntrykitError(
                f"write error: {self._owner.failure}", exit_code=EXIT_WRITE_ERROR
            ) from None


def reset_signals() -> None:
    """Give the command the signal state a shell would: default dispositions, empty mask."""
    for name in _PYTHON_CHANGED:
        signum = getattr(signal, name, None)
        if signum is not None:
            signal.signal(signum, signal.SIG_DFL)
    for signum in signal.valid_signals():
        if signum in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            if callable(signal.getsignal(signum)):  # a handler entrykit installed
                signal.signal(signum, signal.SIG_DFL)
        except (OSError, ValueError):
            continue
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


_HEAD_BYTES = 256  # how much of a file the #! check reads
_BINFMT_MISC = "/proc/sys/fs/binfmt_misc"


def check_command(command: Sequence[str], environ: Mapping[str, str]) -> None:
    """Fail now, before any step, if ``command`` could not be exec'd.

    Looks ``command[0]`` up on the ``PATH`` of ``environ`` as execvp does: a name with a "/"
    is taken as it is; otherwise the first executable file on PATH wins, and a file found
    that is not executable counts only when nothing else is. (No shutil: it costs start-up.)
    The file found is then looked at as the kernel will: its ``#!`` interpreter must exist.
    Raises CommandNotFound (127: no such program, or no such interpreter) or
    CommandNotExecutable (126: not executable, or a file exec cannot run).
    """
    program = command[0]
    if "/" in program:
        candidates = [program]
    else:
        path = environ.get("PATH", os.defpath)
        candidates = [os.path.join(folder or ".", program) for folder in path.split(os.pathsep)]
    found_unusable = False
    for candidate in candidates:
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            _check_file_format(program, candidate)
            return
        found_unusable = found_unusable or os.path.exists(candidate)
    if found_unusable:
        raise CommandNotExecutable(f"permission denied: {program}")
    raise CommandNotFound(f"command not found: {program}")


def _check_file_format(program: str, path: str) -> None:
    """CommandNotFound when the ``#!`` line names a file that does not exist (a shell says
    "bad interpreter"); CommandNotExecutable when that file cannot be run, or when there is no
    ``#!`` line and no other format the kernel knows (exec would fail with ENOEXEC). A file
    that cannot be read (execute-only) is left to exec."""
    try:
        with open(path, "rb") as file:
            head = file.read(_HEAD_BYTES)
    except OSError:
        return
    if head.startswith(b"#!"):
        # The kernel takes the first word of the line after "#!" as the interpreter's path.
        words = head[2:].split(b"\n", 1)[0].split()
        if not words:  # "#!" alone: the kernel finds no interpreter to run
            raise CommandNotExecutable(f"{program}: cannot execute: no interpreter after #!")
        interpreter = os.fsdecode(words[0])
        if not os.path.exists(interpreter):
            raise CommandNotFound(f"{program}: bad interpreter {interpreter}")
        if os.path.isdir(interpreter) or not os.access(interpreter, os.X_OK):
            raise CommandNotExecutable(f"{program}: interpreter {interpreter} is not executable")
        return
    if head.startswith(b"\x7fELF") or _binfmt_handlers():
        return  # a binary, or a format registered with binfmt_misc (qemu, wine, jar, ...)
    raise CommandNotExecutable(f"{program}: cannot execute: Exec format error (no #! line)")


def _binfmt_handlers() -> bool:
    """Whether binfmt_misc has formats registered (then another file format may run)."""
    try:
        return any(name not in ("register", "status") for name in os.listdir(_BINFMT_MISC))
    except OSError:
        return False


def exec_command(
    command: Sequence[str], environ: Mapping[str, str], *, execvpe: Exec = os.execvpe
) -> NoReturn:
    """Replace this process with ``command``; returns only by raising.

    Raises CommandNotFound (127) or CommandNotExecutable (126).
    """
    flush_stdio()
    reset_signals()
    try:
        execvpe(command[0], list(command), dict(environ))
    except FileNotFoundError:
        raise CommandNotFound(f"command not found: {command[0]}") from None
    except PermissionError:
        raise CommandNotExecutable(f"permission denied: {command[0]}") from None
    except OSError as error:  # ENOEXEC (no #! line), EISDIR, ...: there but not runnable
        raise CommandNotExecutable(f"cannot execute {command[0]}: {error.strerror}") from None
    raise AssertionError("execvpe returned")  # only a test double returns


def _passwd_entry(user: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        return None


def _group_id(group: str) -> int:
    try:
        return grp.getgrgid(int(group)).gr_gid if group.isdigit() else grp.getgrnam(group).gr_gid
    except KeyError:
        if group.isdigit():
            return int(group)  # a numeric gid needs no /etc/group entry, as with gosu
        raise ConfigError(f"ENTRYKIT_USER: unknown group {group!r}") from None


def _chown_tree(folder: Path, uid: int, gid: int) -> None:
    """chown -R that never follows a link, the folder itself included.

    As root, following one would hand the link's target (``/etc``, planted by the user in
    its own folder on an earlier start) to the user. Raises ConfigError when the folder is a
    link, or cannot be made or walked.
    """
    if not os.path.lexists(folder):
        folder.mkdir(parents=True)
    if os.path.islink(folder):
        raise ConfigError(
            f"ENTRYKIT_CHOWN: {folder} is a symbolic link; name the folder it points to "
            "(links are never followed there, so that none can hand another folder to the user)"
        )
    try:
        os.chown(folder, uid, gid, follow_symlinks=False)
        # fwalk hands out folder descriptors: a folder swapped for a link meanwhile is not
        # entered, and each chown acts on the entry itself (a link stays a link).
        for _, dirs, files, dir_fd in os.fwalk(folder, follow_symlinks=False):
            for name in dirs + files:
                os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
    except OSError as error:
        raise ConfigError(f"ENTRYKIT_CHOWN: cannot hand {folder} over: {error}") from None
    log.info("handed %s to uid %d gid %d", folder, uid, gid)
