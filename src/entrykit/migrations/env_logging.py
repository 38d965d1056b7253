"""entrykit's logging, kept working while a project's env.py configures logging its own way."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from entrykit.errors import ConfigError
from entrykit.migrations.failures import described_error


def below_warning(record: logging.LogRecord) -> bool:
    """A logging filter that keeps warnings and worse only."""
    return record.levelno >= logging.WARNING


@contextlib.contextmanager
def logging_survives_fileconfig() -> Iterator[None]:
    """Keep entrykit's handlers and loggers through env.py's ``logging.config.fileConfig``.

    fileConfig replaces the root handlers and, by default, disables every existing logger:
    entrykit's lines (of this and of side-by-side steps) would vanish or lose their format
    and redaction. While Alembic runs, fileConfig keeps existing loggers enabled and hands
    the root logger back at once; afterwards the root logger and entrykit's loggers are
    restored whatever env.py did. The levels the ini sets for alembic/sqlalchemy stay.
    A logging section that fileConfig cannot use is a ConfigError naming the file.
    """
    import logging.config

    from entrykit import logs

    saved = logs.snapshot()

    def restore() -> None:
        if saved[0]:  # nothing installed (library use): leave env.py's set-up alone
            logs.restore_after(saved)

    original = logging.config.fileConfig

    def file_config(
        fname: Any,
        defaults: Any = None,
        disable_existing_loggers: bool = True,
        encoding: str | None = None,
    ) -> None:
        try:
            original(fname, defaults, disable_existing_loggers=False, encoding=encoding)
        except Exception as error:  # whatever fileConfig trips on is in the file it was given
            raise ConfigError(
                f"the logging sections of {fname} do not work: {described_error(error)}"
            ) from None
        finally:
            restore()

    logging.config.fileConfig = file_config
    try:
        yield
    finally:
        logging.config.fileConfig = original
        restore()
