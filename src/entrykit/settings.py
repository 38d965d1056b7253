"""Settings: read once from options, the environment, a config file and defaults.

Every value remembers where it came from, so ``entrykit plan`` can show it and a bad value
can be reported as "ENTRYKIT_WAIT_TIMEOUT (env): not a number". This is the only module that
reads ``os.environ`` for configuration.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from entrykit.errors import ConfigError
from entrykit.specs import (
    CommandSpec,
    ModelSpec,
    as_command_specs,
    as_model_specs,
    command_tables,
    model_specs_or_error,
    model_tables,
)
from entrykit.values import (
    as_bool,
    as_host_ports,
    as_http_urls,
    as_list,
    as_nonempty,
    as_optional_path,
    as_optional_text,
    as_path,
    as_paths,
    as_seconds,
    as_text,
    as_workers,
    choice,
    join_url_pieces,
    split_host_port,
)

__all__ = [
    "CommandSpec",
    "ModelSpec",
    "Settings",
    "join_url_pieces",
    "split_host_port",
    "unknown_variables",
    "variable_names",
    "wanted_logging",
]

OPTION = "option"
ENV = "env"
DEFAULT = "default"

# Every driver spelling is waited on and migrated with psycopg.
POSTGRES_SCHEMES = (
    "postgresql",
    "postgres",
    "postgresql+psycopg",
    "postgresql+psycopg2",
    "postgresql+asyncpg",
)
# MySQL and MariaDB: waited on and migrated with PyMySQL, whatever driver the URL names.
MYSQL_SCHEMES = (
    "mysql",
    "mariadb",
    "mysql+pymysql",
    "mysql+mysqldb",
    "mysql+aiomysql",
    "mysql+asyncmy",
    "mariadb+pymysql",
)
DATABASE_SCHEMES = (*POSTGRES_SCHEMES, *MYSQL_SCHEMES, "sqlite")


# --- value parsers: raw (str from env/options, or TOML value) -> typed value ------------


def _as_database_url(raw: object) -> str | None:
    url = as_text(raw)
    if not url:
        return None
    scheme, sep, _ = url.partition("://")
    if not sep or scheme.lower() not in DATABASE_SCHEMES:
        schemes = ", ".join(f"{known}://" for known in DATABASE_SCHEMES[:-1])
        raise ValueError(f"expected a URL starting with {schemes} or sqlite:///")
    if scheme.lower() == "sqlite" and not url[len("sqlite://") :].startswith("/"):
        raise ValueError("expected sqlite:///PATH")
    return url


def _as_command_line(raw: object) -> str | None:
    """A command line kept as written, once it is known to split like a shell would."""
    from entrykit.specs import split_command

    text = as_text(raw)
    if not text:
        return None
    split_command(text)  # ValueError: unbalanced quotes
    return text


class _Setting(NamedTuple):
    name: str
    parse: Callable[[object], Any]
    default: Any
    env: tuple[str, ...] = ()

    @property
    def variables(self) -> tuple[str, ...]:
        return self.env or (f"ENTRYKIT_{self.name.upper()}",)


# Highest-priority variable first where two name one setting.
_SETTINGS: tuple[_Setting, ...] = (
    _Setting("log_level", choice("debug", "info", "warning", "error"), "info"),
    _Setting("log_format", choice("text", "json"), "text"),
    _Setting("secrets_dir", as_path, Path("/run/secrets")),
    _Setting("secrets", as_list, ()),
    _Setting(
        "database_url",
        _as_database_url,
        None,
        env=("ENTRYKIT_DATABASE_URL", "DATABASE_URL"),
    ),
    _Setting("wait", choice("auto", "1", "0", booleans=True), "auto"),
    _Setting("wait_tcp", as_host_ports, ()),
    _Setting("wait_http", as_http_urls, ()),
    _Setting("wait_for", as_list, ()),
    _Setting("wait_timeout", as_seconds, 60.0),
    _Setting("migrate", choice("0", "1", "wait", booleans=True), "0"),
    _Setting("migrate_url", _as_database_url, None),
    _Setting("migrate_revision", as_nonempty, "head"),
    _Setting("alembic_config", as_nonempty, "alembic.ini"),
    _Setting("migrate_lock_timeout", as_seconds, 300.0),
    _Setting("migrate_unknown", choice("fail", "ignore"), "fail"),
    _Setting("migrate_command", _as_command_line, None),
    _Setting("migrate_check_command", _as_command_line, None),
    _Setting("prestart", as_command_specs, ()),
    _Setting("hf_models", as_model_specs, ()),
    _Setting("hf_include", as_list, ()),
    _Setting("hf_exclude", as_list, ()),
    _Setting("hf_lockfile", as_optional_path, None),
    _Setting("hf_offline", as_bool, False),
    _Setting("hf_max_workers", as_workers, 8),
    _Setting("hf_local_dir", as_optional_path, None),
    _Setting("user", as_optional_text, None),
    _Setting("chown", as_paths, ()),
)
SETTING_NAMES = tuple(setting.name for setting in _SETTINGS)
_BY_NAME = {setting.name: setting for setting in _SETTINGS}

CONFIG_VARIABLE = "ENTRYKIT_CONFIG"


class Settings(NamedTuple):
    """Everything entrykit was told, parsed and validated.

    Build it with :meth:`Settings.load`; ``sources`` maps each field name to ``option``,
    ``env``, ``file:<path>`` or ``default``.
    """

    log_level: str = "info"
    log_format: str = "text"
    secrets_dir: Path = Path("/run/secrets")
    secrets: tuple[str, ...] = ()
    database_url: str | None = None
    wait: str = "auto"
    wait_tcp: tuple[str, ...] = ()
    wait_http: tuple[str, ...] = ()
    wait_for: tuple[str, ...] = ()
    wait_timeout: float = 60.0
    migrate: str = "0"
    migrate_url: str | None = None
    migrate_revision: str = "head"
    alembic_config: str = "alembic.ini"
    migrate_lock_timeout: float = 300.0
    migrate_unknown: str = "fail"
    migrate_command: str | None = None
    migrate_check_command: str | None = None
    prestart: tuple[CommandSpec, ...] = ()
    hf_models: tuple[ModelSpec, ...] = ()
    hf_include: tuple[str, ...] = ()
    hf_exclude: tuple[str, ...] = ()
    hf_lockfile: Path | None = None
    hf_offline: bool = False
    hf_max_workers: int = 8
    hf_local_dir: Path | None = None
    user: str | None = None
    chown: tuple[Path, ...] = ()
    cwd: Path = Path()
    environ: Mapping[str, str] = {}
    sources: Mapping[str, str] = {}
    config_file: Path | None = None
    options: Mapping[str, object] = {}

    def __repr__(self) -> str:  # the environment holds secrets: never show it
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in SETTING_NAMES)
        return f"Settings({shown})"

    @property
    def should_wait_for_database(self) -> bool:
        return self.wait == "1" or (self.wait == "auto" and self.database_url is not None)

    @property
    def waits_for_anything(self) -> bool:
        """Whether ``run`` has a wait step: the database, or any other dependency."""
        return bool(
            self.should_wait_for_database or self.wait_tcp or self.wait_http or self.wait_for
        )

    @property
    def effective_migrate_url(self) -> str | None:
        return self.migrate_url or self.database_url

    def resolve(self, path: Path | str) -> Path:
        """A path from the settings, relative ones taken from the working directory."""
        return self.cwd / path

    @classmethod
    def load(
        cls,
        options: Mapping[str, object] | None = None,
        environ: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Settings:
        """Read settings: option > environment > config file > default.

        Options whose value is None are treated as not given. Raises ConfigError naming the
        setting and its source when a value is unknown, of the wrong type or unparsable, or
        when ENTRYKIT_MIGRATE_CHECK_COMMAND is set without ENTRYKIT_MIGRATE_COMMAND.
        """
        options = {k: v for k, v in (options or {}).items() if v is not None}
        environ = dict(os.environ if environ is None else environ)
        cwd = Path.cwd() if cwd is None else cwd
        unknown = set(options) - set(SETTING_NAMES)
        if unknown:
            raise ConfigError(f"unknown option(s): {', '.join(sorted(unknown))}")

        config_file, file_values = _read_config_file(environ, cwd)
        _hide_url_passwords(options, environ, file_values)
        file_source = f"file:{config_file}"
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        labels: dict[str, str] = {}
        for setting in _SETTINGS:
            raw, source, label = _pick(setting, options, environ, file_values, file_source)
            labels[setting.name] = label
            if source == DEFAULT:
                values[setting.name] = setting.default
            else:
                try:
                    values[setting.name] = setting.parse(raw)
                except ValueError as error:
                    raise ConfigError(f"{label} ({source}): {error}") from None
            sources[setting.name] = source
        _hide_command_url_passwords(values)
        if values["migrate_check_command"] and not values["migrate_command"]:
            where = f"{labels['migrate_check_command']} ({sources['migrate_check_command']})"
            raise ConfigError(
                f"{where}: needs ENTRYKIT_MIGRATE_COMMAND (Alembic has its own check)"
            )
        return cls(
            **values,
            cwd=cwd,
            environ=environ,
            sources=sources,
            config_file=config_file,
            options=options,
        )

    def with_environ(self, environ: Mapping[str, str]) -> Settings:
        """The same options and config file read again over a new environment.

        Used after the secrets step, since a secret may itself be a setting
        (``DATABASE_URL_FILE``).
        """
        return Settings.load(self.options, environ, self.cwd)

    def items(self) -> list[tuple[str, object, str]]:
        """(name, value, source) for every setting, in the documented order."""
        return [
            (name, getattr(self, name), self.sources.get(name, DEFAULT)) for name in SETTING_NAMES
        ]


# Their passwords are secrets from the moment they are read, whatever fails later.
_URL_SETTINGS = ("database_url", "migrate_url", "wait_for", "wait_http")


_LIST_URL_SETTINGS = ("wait_for", "wait_http")

# "redis:/:pw@host", "redis//:pw@host", ":pw@host": user-info before an "@" of a mistyped URL
_MISTYPED_USERINFO = re.compile(r"^(?:[A-Za-z][A-Za-z0-9+.-]*:?)?[/:]*(?P<userinfo>[^@]*)@")


def _hide_url_passwords(
    options: Mapping[str, object], environ: Mapping[str, str], file_values: Mapping[str, object]
) -> None:
    """Register every password in the URL settings (and HF_ENDPOINT) for redaction, from the
    moment they are read: the URLs as the settings will read them, one by one (a whole list
    read as one URL would make ports and path words "passwords"), and the user-info of a
    mistyped URL (``redis:/:pw@host``), which an error message may quote."""
    from entrykit.logs import add_secret, add_url_secrets

    urls: list[str] = []
    for setting in _SETTINGS:
        if setting.name not in _URL_SETTINGS:
            continue
        raws = [options.get(setting.name), file_values.get(setting.name)]
        raws += [environ.get(variable) for variable in setting.variables]
        for raw in raws:
            if isinstance(raw, list | tuple):
                urls += [item for item in raw if isinstance(item, str)]
            elif isinstance(raw, str) and setting.name in _LIST_URL_SETTINGS:
                urls += join_url_pieces(raw.split(","))
            elif isinstance(raw, str):
                urls.append(raw)
    endpoint = environ.get("HF_ENDPOINT")
    for url in [*urls, *([endpoint] if endpoint else [])]:
        add_url_secrets(url)
        mistyped = None if "://" in url else _MISTYPED_USERINFO.match(url.strip())
        if mistyped:
            for part in mistyped["userinfo"].split(":"):
                add_secret(part)


def _hide_command_url_passwords(values: Mapping[str, Any]) -> None:
    """Register the passwords of URLs in command lines (``psql postgresql://u:pw@h/db``)
    and in a command's ``env``: they are logged as the commands start."""
    from entrykit.logs import add_url_secrets_in

    words = [word for spec in values["prestart"] for word in spec.argv]
    words += [value for spec in values["prestart"] for _, value in spec.env]
    for line in (values["migrate_command"], values["migrate_check_command"]):
        words += (line or "").split()
    add_url_secrets_in(words)


def unknown_variables(
    environ: Mapping[str, str], secrets: Iterable[str] = ()
) -> list[tuple[str, str]]:
    """``ENTRYKIT_*`` variables that are no setting (``ENTRYKIT_MIGRATE`` misspelt, or a
    setting's ``_FILE``, which only ``ENTRYKIT_SECRETS`` reads), each with "; did you mean
    X?" when a setting's name is close, else "". Secrets listed in ``secrets`` (the
    ``ENTRYKIT_SECRETS`` entries) and their ``_FILE`` are no typo."""
    listed = {entry.split("=", 1)[0].strip().rstrip("?") for entry in secrets}
    known = set(variable_names())
    unknown = [
        name
        for name in environ
        if name.startswith("ENTRYKIT_")
        and name not in known
        and name.removesuffix("_FILE") not in listed
    ]
    if not unknown:
        return []
    import difflib  # only for a typo: it costs start-up

    close_to = {name.removeprefix("ENTRYKIT_"): name for name in known}
    found = []
    for name in sorted(unknown):
        if name.endswith("_FILE") and name.removesuffix("_FILE") in known:
            found.append((name, f"; list {name.removesuffix('_FILE')} in ENTRYKIT_SECRETS"))
            continue
        close = difflib.get_close_matches(name.removeprefix("ENTRYKIT_"), close_to, 1, 0.75)
        found.append((name, f"; did you mean {close_to[close[0]]}?" if close else ""))
    return found


def variable_names() -> tuple[str, ...]:
    """Every environment variable entrykit reads for its settings (for docs and tests)."""
    names = [var for setting in _SETTINGS for var in setting.variables]
    return (*names, CONFIG_VARIABLE)


def wanted_logging(
    environ: Mapping[str, str] | None = None, cwd: Path | None = None
) -> tuple[str, str]:
    """The log level and format asked for, read leniently (a bad value, or a config file
    that does not load, counts as not given): an error that stops the settings from
    loading is still reported in the format asked for."""
    environ = os.environ if environ is None else environ
    try:
        _, file_values = _read_config_file(environ, Path.cwd() if cwd is None else cwd)
    except ConfigError:
        file_values = {}
    wanted = []
    for setting in (_BY_NAME["log_level"], _BY_NAME["log_format"]):
        raw, source, _ = _pick(setting, {}, environ, file_values, "")
        try:
            wanted.append(setting.default if source == DEFAULT else setting.parse(raw))
        except ValueError:
            wanted.append(setting.default)
    return wanted[0], wanted[1]


def _pick(
    setting: _Setting,
    options: Mapping[str, object],
    environ: Mapping[str, str],
    file_values: Mapping[str, object],
    file_source: str,
) -> tuple[object, str, str]:
    """The raw value of one setting, its source and the name to report it under."""
    if setting.name in options:
        return options[setting.name], OPTION, f"--{setting.name.replace('_', '-')}"
    for variable in setting.variables:
        if variable in environ:
            return environ[variable], ENV, variable
    if setting.name in file_values:
        return file_values[setting.name], file_source, setting.name
    return setting.default, DEFAULT, setting.name


def _read_config_file(
    environ: Mapping[str, str], cwd: Path
) -> tuple[Path | None, dict[str, object]]:
    """Find and parse the config file: $ENTRYKIT_CONFIG, ./entrykit.toml, ./pyproject.toml."""
    explicit = environ.get(CONFIG_VARIABLE, "").strip()
    if explicit:
        path = cwd / explicit
        if not _is_file(path):
            raise ConfigError(f"{CONFIG_VARIABLE} (env): no such file {path}")
        return path, _table_values(_load_toml(path), path)
    path = cwd / "entrykit.toml"
    if _is_file(path):
        return path, _table_values(_load_toml(path), path)
    path = cwd / "pyproject.toml"
    if _is_file(path):
        tool = _load_toml(path).get("tool", {})
        if not isinstance(tool, dict):
            raise ConfigError(f"{path}: 'tool' must be a table, got {type(tool).__name__}")
        table = tool.get("entrykit")
        if table is not None and not isinstance(table, dict):
            raise ConfigError(f"{path}: [tool.entrykit] must be a table")
        if isinstance(table, dict):
            return path, _table_values(table, path)
    return None, {}


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError as error:  # e.g. a working directory this user may not search
        raise ConfigError(f"cannot look for the config file {path}: {error.strerror}") from None


def _load_toml(path: Path) -> dict[str, Any]:
    import tomllib  # only when there is a config file: it costs 3 ms of every start

    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read config file: {error}") from None


def _table_values(table: Mapping[str, Any], path: Path) -> dict[str, object]:
    """Config-file keys -> raw setting values; ``[[models]]`` tables become ModelSpecs and
    ``[[commands]]`` tables CommandSpecs (the ``prestart`` setting)."""
    values = dict(table)
    models = values.pop("models", None)
    commands = values.pop("commands", None)
    unknown = sorted(set(values) - set(SETTING_NAMES))
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r}")
    if models is not None:
        specs = [*model_specs_or_error(values.get("hf_models", ()), path)]
        specs += model_tables(models, path)
        values["hf_models"] = specs
    if commands is not None:
        if "prestart" in values:
            raise ConfigError(f"{path}: 'prestart' and [[commands]] tables: use one of them")
        values["prestart"] = command_tables(commands, path)
    return values


def describe(value: object) -> str:
    """A setting's value as `plan` shows it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple | list):
        return ",".join(describe(item) for item in value)
    return str(value)
