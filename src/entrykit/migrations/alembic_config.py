"""The project's Alembic configuration, loaded the way the ``alembic`` command would load it.

A config file that cannot be read (a broken ``alembic.ini`` or ``pyproject.toml``, a missing
``script_location``, scripts that cannot be loaded) is a ConfigError (exit 10): the settings
are wrong, not a migration.
"""

from __future__ import annotations

import configparser
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from entrykit.errors import ConfigError
from entrykit.migrations.failures import whole_message

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from entrykit.settings import Settings


def alembic_config_path(settings: Settings) -> Path:
    """The Alembic config file: ``alembic_config`` from ``settings.cwd``; when that is the
    default ``alembic.ini`` and missing, a ``pyproject.toml`` with ``[tool.alembic]``.

    Raises ConfigError when there is none.
    """
    path = settings.cwd / settings.alembic_config
    if path.is_file():
        return path
    pyproject = settings.cwd / "pyproject.toml"
    if settings.alembic_config == "alembic.ini" and _has_tool_alembic(pyproject):
        return pyproject
    raise ConfigError(
        f"Alembic config {path} not found: set ENTRYKIT_ALEMBIC_CONFIG to your alembic.ini "
        "(or a pyproject.toml with [tool.alembic])"
    )


def _has_tool_alembic(path: Path) -> bool:
    import tomllib

    try:
        with path.open("rb") as file:
            return "alembic" in tomllib.load(file).get("tool", {})
    except (OSError, tomllib.TOMLDecodeError):
        return False


def load_alembic_config(
    settings: Settings, sqlalchemy_url: str, *, output: TextIO | None = None
) -> Config:
    """An Alembic Config for ``settings``, usable from any working directory.

    Alembic takes a relative ``script_location``, ``version_locations`` and
    ``prepend_sys_path`` from the current directory; here they are taken from the config
    file's folder, where ``alembic`` would be run. Raises ConfigError, also for a config file
    that does not parse.
    """
    quiet_alembic_imports()
    from alembic.config import Config
    from alembic.util import CommandError

    path = alembic_config_path(settings)
    if path.name == "pyproject.toml":
        config = Config(toml_file=str(path), output_buffer=output)
    else:
        beside = path.parent / "pyproject.toml"
        config = Config(
            str(path),
            toml_file=str(beside) if _has_tool_alembic(beside) else None,
            output_buffer=output,
        )
    here = path.parent.resolve()
    try:
        script_location = config.get_alembic_option("script_location")
        if not script_location:
            raise ConfigError(f"{path} sets no script_location")
        config.set_main_option("script_location", _escape(_from(here, script_location)))
        paths = [_from(here, p) for p in config.get_prepend_sys_paths_list() or []]
        locations = [_from(here, p) for p in config.get_version_locations_list() or []]
    # TOMLDecodeError is a ValueError; a [tool.alembic] value of the wrong type is a
    # TypeError or AttributeError deep in Alembic, a [tool] alembic that is no table a
    # CommandError: each is our user's file, not a failed migration.
    except (ValueError, TypeError, AttributeError, configparser.Error, CommandError) as error:
        raise ConfigError(f"{path} does not parse: {whole_message(error)}") from None
    for entry in reversed(paths):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    if locations:
        config.set_main_option("path_separator", "os")
        config.set_main_option("version_locations", _escape(os.pathsep.join(locations)))
    config.set_main_option("sqlalchemy.url", _escape(sqlalchemy_url))
    return config


def check_alembic_config(settings: Settings) -> None:
    """ConfigError now, before any wait, when the Alembic config is missing or does not
    parse: no deadline of waiting for a database should come first."""
    config = load_alembic_config(settings, "sqlite://")  # the real URL is set when migrating
    script_directory(config)  # a script_location or version_locations that does not exist


def script_directory(config: Config) -> ScriptDirectory:
    """The migration scripts of ``config``. Raises ConfigError when they cannot be loaded."""
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    try:
        return ScriptDirectory.from_config(config)
    except CommandError as error:
        raise ConfigError(f"Alembic scripts: {error}") from None


def quiet_alembic_imports() -> None:
    """Alembic announces each of its plugins at INFO while importing; the alembic CLI never
    shows these lines (its logging is not set up yet then), nor do we."""
    plugins = logging.getLogger("alembic.runtime.plugins")
    if plugins.level == logging.NOTSET:
        plugins.setLevel(logging.WARNING)


def _from(here: Path, location: str) -> str:
    """``location`` taken from ``here`` unless absolute or a ``package:folder`` resource."""
    if os.path.isabs(location) or (":" in location and not location.startswith(".")):
        return location
    return str(here / location)


def _escape(value: str) -> str:
    return value.replace("%", "%%")  # ConfigParser interpolation
