"""Errors raised by entrykit's library code, each carrying its exit code (docs/reference.md).

Only ``cli.py`` turns these into an exit; everything else raises them.
"""

from __future__ import annotations

import signal

EXIT_OK = 0
EXIT_NOT_AT_TARGET = 1  # migrate --check: pending revisions; healthcheck: unhealthy
EXIT_USAGE = 2
EXIT_CONFIG = 10
EXIT_SECRET = 11
EXIT_NOT_READY = 20
EXIT_DB_REFUSED = 21
EXIT_MIGRATION_FAILED = 30
EXIT_MIGRATION_LOCK_TIMEOUT = 31
EXIT_UNKNOWN_REVISION = 32
EXIT_PREFETCH_FAILED = 40
EXIT_DISK_FULL = 41
EXIT_REPO_REFUSED = 42
EXIT_COMMAND_FAILED = 50
EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127


class EntrykitError(Exception):
    """Base of every error entrykit reports; ``exit_code`` is what the CLI exits with."""

    exit_code: int = 1
    logged: bool = False  # set once reported, so that the error is logged exactly once

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class ConfigError(EntrykitError):
    """A setting is unknown, of the wrong type or unparsable (exit 10)."""

    exit_code = EXIT_CONFIG


class SecretError(EntrykitError):
    """A secret is missing, too big, not UTF-8, holds a NUL or escapes its folder (exit 11)."""

    exit_code = EXIT_SECRET


class DependencyNotReady(EntrykitError):
    """A database, TCP or HTTP dependency did not answer before the deadline (exit 20)."""

    exit_code = EXIT_NOT_READY


class DatabaseRefused(EntrykitError):
    """The database refused us for good: authentication or unknown database (exit 21)."""

    exit_code = EXIT_DB_REFUSED


class MigrationFailed(EntrykitError):
    """A revision failed while upgrading (exit 30)."""

    exit_code = EXIT_MIGRATION_FAILED


class MigrationLockTimeout(EntrykitError):
    """Another replica held the migration lock longer than the lock timeout (exit 31)."""

    exit_code = EXIT_MIGRATION_LOCK_TIMEOUT


class UnknownRevision(EntrykitError):
    """The database is at a revision these migration scripts do not know (exit 32)."""

    exit_code = EXIT_UNKNOWN_REVISION


class PrefetchFailed(EntrykitError):
    """A download failed, or ``--verify`` found missing or corrupt files (exit 40)."""

    exit_code = EXIT_PREFETCH_FAILED


class NotEnoughDiskSpace(EntrykitError):
    """The cache's file system cannot hold the bytes still to download (exit 41)."""

    exit_code = EXIT_DISK_FULL


class RepoRefused(EntrykitError):
    """A repo is missing, gated or refused: 401, 403 or 404 (exit 42)."""

    exit_code = EXIT_REPO_REFUSED


class CommandFailed(EntrykitError):
    """A start-up command exited non-zero, was not found, was killed or timed out (exit 50)."""

    exit_code = EXIT_COMMAND_FAILED


class CommandNotFound(EntrykitError):
    """The command to exec does not exist (exit 127)."""

    exit_code = EXIT_NOT_FOUND


class CommandNotExecutable(EntrykitError):
    """The command to exec exists but cannot be executed (exit 126)."""

    exit_code = EXIT_NOT_EXECUTABLE


class Cancelled(EntrykitError):
    """A step was asked to stop: another step failed, or a signal arrived.

    Never the reason for an exit: the failure or the signal that caused it is reported.
    """


class Stopped(EntrykitError):
    """A signal stopped the steps; exits 128+N as a shell would."""

    STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)

    def __init__(self, signum: int) -> None:
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name}", exit_code=128 + signum)
        self.signum = signum

    @staticmethod
    def raise_on_signal(signum: int, frame: object) -> None:
        """A signal handler: raise Stopped in the main thread."""
        raise Stopped(signum)
