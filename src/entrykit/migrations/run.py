"""The migrate step: ``ENTRYKIT_MIGRATE_COMMAND`` when set, else Alembic in-process."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, TextIO

from entrykit.errors import ConfigError

if TYPE_CHECKING:
    from entrykit.migrations.upgrade import MigrateOutcome
    from entrykit.settings import Settings


def migrate(
    settings: Settings,
    *,
    revision: str | None = None,
    check: bool = False,
    sql: bool = False,
    output: TextIO | None = None,
    cancel: threading.Event | None = None,
) -> MigrateOutcome:
    """Migrate with the configured migrator; ``check`` reports in ``pending`` what is left.

    With a migrate command, ``revision`` and ``sql`` are configuration errors (the command
    knows its own targets). Raises what ``entrykit.migrations.upgrade.migrate`` or
    ``entrykit.migrations.command.migrate_with_command`` raise.
    """
    if settings.migrate_command:
        from entrykit.migrations.command import migrate_with_command

        if sql:
            raise ConfigError("--sql is for Alembic; ENTRYKIT_MIGRATE_COMMAND is set")
        if revision:
            raise ConfigError("--revision is for Alembic; ENTRYKIT_MIGRATE_COMMAND is set")
        return migrate_with_command(settings, check=check, cancel=cancel)
    from entrykit.migrations.alembic_config import check_alembic_config
    from entrykit.migrations.upgrade import migrate as alembic_migrate

    check_alembic_config(settings)
    return alembic_migrate(
        settings, revision=revision, check=check, sql=sql, output=output, cancel=cancel
    )


def wait_for_head(settings: Settings, *, cancel: threading.Event | None = None) -> None:
    """``ENTRYKIT_MIGRATE=wait``: until the database is at head (the check command exits 0,
    or Alembic's heads), within ``wait_timeout``.

    Raises ConfigError, DatabaseRefused, DependencyNotReady, UnknownRevision, Cancelled.
    """
    if settings.migrate_command:
        from entrykit.migrations.command import wait_for_head_with_command

        wait_for_head_with_command(settings, cancel=cancel)
        return
    from entrykit.migrations.alembic_config import check_alembic_config
    from entrykit.migrations.upgrade import wait_for_head as alembic_wait_for_head

    check_alembic_config(settings)
    alembic_wait_for_head(settings, cancel=cancel)
