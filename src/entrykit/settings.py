"""Settings: read once from options, the environment, a config file and defaults.

Every value remembers where it came from, so ``entrykit plan`` can show it and a bad value
can be reported as "ENTRYKIT_WAIT_TIMEOUT (env): not a number". This is the only module that
reads ``os.environ`` for configuration.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from entrykit.errors import ConfigError

OPTION = "option"
ENV = "env"
DEFAULT = "default"

REPO_TYPES = ("model", "dataset", "space")
# Every driver spelling is waited on and migrated with psycopg (INTERFACE §4).
POSTGRES_SCHEMES = (
    "postgresql",
    "postgres",
    "postgresql+psycopg",
    "postgresql+psycopg2",
    "postgresql+asyncpg",
)
DATABASE_SCHEMES = (*POSTGRES_SCHEMES, "sqlite")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


# Records are NamedTuples, not dataclasses: importing dataclasses (and inspect) would cost
# every container start about 5 ms, a sixth of a bare Python start-up.


class ModelSpec(NamedTuple):
    """One Hugging Face repo to prefetch: ``[TYPE:]OWNER/NAME[@REVISION]`` plus patterns."""

    repo_id: str
    repo_type: str = "model"
    revision: str | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        """Parse a repo spec; raises ConfigError with the reason when it is not one."""
        spec = text.strip()
        repo_type = "model"
        if ":" in spec.split("/", 1)[0]:
            repo_type, spec = spec.split(":", 1)
            if repo_type not in REPO_TYPES:
                raise ConfigError(
                    f"repo spec {text!r}: type must be one of {', '.join(REPO_TYPES)}"
                )
        revision: str | None = None
        if "@" in spec:
            spec, revision = spec.split("@", 1)
            if not revision or any(c.isspace() for c in revision):
                raise ConfigError(f"repo spec {text!r}: empty or blank revision after '@'")
        if not _REPO_ID.match(spec) or ".." in spec:
            raise ConfigError(f"repo spec {text!r}: expected [TYPE:]OWNER/NAME[@REVISION]")
        return cls(repo_id=spec, repo_type=repo_type, revision=revision)

    def __str__(self) -> str:
        prefix = "" if self.repo_type == "model" else f"{self.repo_type}:"
        suffix = f"@{self.revision}" if self.revision else ""
        return f"{prefix}{self.repo_id}{suffix}"


# --- value parsers: raw (str from env/options, or TOML value) -> typed value ------------


def _as_text(raw: object) -> str:
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise ValueError(f"expected a string, got {type(raw).__name__}")
    return str(raw).strip()


def _as_list(raw: object) -> tuple[str, ...]:
    if isinstance(raw, list | tuple):
        items = [_as_text(item) for item in raw]
    else:
        items = _as_text(raw).split(",")
    return tuple(item.strip() for item in items if item.strip())


def _as_bool(raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    text = _as_text(raw).lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError("expected a boolean (1/0, true/false, yes/no, on/off)")


def _choice(*choices: str, booleans: bool = False) -> Callable[[object], str]:
    def parse(raw: object) -> str:
        if booleans and (isinstance(raw, bool) or _as_text(raw).lower() in _TRUE | _FALSE):
            return "1" if _as_bool(raw) else "0"
        text = _as_text(raw).lower()
        if text not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return text

    return parse


def _as_seconds(raw: object) -> float:
    if isinstance(raw, bool):
        raise ValueError("expected a number of seconds")
    try:
        seconds = float(raw) if isinstance(raw, int | float) else float(_as_text(raw))
    except ValueError:
        raise ValueError("expected a number of seconds") from None
    if not seconds >= 0 or seconds == float("inf"):
        raise ValueError("expected a finite number of seconds, 0 or more")
    return seconds


def _as_workers(raw: object) -> int:
    if isinstance(raw, bool):
        raise ValueError("expected a whole number from 1 to 64")
    try:
        count = raw if isinstance(raw, int) else int(_as_text(raw))
    except ValueError:
        raise ValueError("expected a whole number from 1 to 64") from None
    if not 1 <= count <= 64:
        raise ValueError("expected a whole number from 1 to 64")
    return count


def _as_path(raw: object) -> Path:
    text = _as_text(raw)
    if not text:
        raise ValueError("expected a path")
    return Path(text)


def _as_optional_path(raw: object) -> Path | None:
    return _as_path(raw) if _as_text(raw) else None


def _as_paths(raw: object) -> tuple[Path, ...]:
    return tuple(Path(item) for item in _as_list(raw))


def _as_nonempty(raw: object) -> str:
    text = _as_text(raw)
    if not text:
        raise ValueError("must not be empty")
    return text


def _as_optional_text(raw: object) -> str | None:
    return _as_text(raw) or None


def _as_database_url(raw: object) -> str | None:
    url = _as_text(raw)
    if not url:
        return None
    scheme, sep, _ = url.partition("://")
    if not sep or scheme.lower() not in DATABASE_SCHEMES:
        raise ValueError(
            "expected a URL starting with postgresql://, postgres://, "
            "postgresql+psycopg://, postgresql+psycopg2://, postgresql+asyncpg:// or sqlite:///"
        )
    if scheme.lower() == "sqlite" and not url[len("sqlite://") :].startswith("/"):
        raise ValueError("expected sqlite:///PATH")
    return url


def split_host_port(text: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port); raises ConfigError otherwise."""
    host, sep, port = text.strip().rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{text!r} is not HOST:PORT")
    return host, int(port)


def _as_host_ports(raw: object) -> tuple[str, ...]:
    targets = _as_list(raw)
    for target in targets:
        try:
            split_host_port(target)
        except ConfigError as error:
            raise ValueError(str(error)) from None
    return targets


def _as_http_urls(raw: object) -> tuple[str, ...]:
    urls = _as_list(raw)
    for url in urls:
        if not re.match(r"^https?://[^/\s]+", url):
            raise ValueError(f"{url!r} is not an http:// or https:// URL")
    return urls


def _as_model_specs(raw: object) -> tuple[ModelSpec, ...]:
    if isinstance(raw, list | tuple) and all(isinstance(item, ModelSpec) for item in raw):
        return tuple(raw)
    specs = []
    for text in _as_list(raw):
        try:
            specs.append(ModelSpec.parse(text))
        except ConfigError as error:
            raise ValueError(str(error)) from None
    return tuple(specs)


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
    _Setting("log_level", _choice("debug", "info", "warning", "error"), "info"),
    _Setting("log_format", _choice("text", "json"), "text"),
    _Setting("secrets_dir", _as_path, Path("/run/secrets")),
    _Setting("secrets", _as_list, ()),
    _Setting(
        "database_url",
        _as_database_url,
        None,
        env=("ENTRYKIT_DATABASE_URL", "DATABASE_URL"),
    ),
    _Setting("wait", _choice("auto", "1", "0", booleans=True), "auto"),
    _Setting("wait_tcp", _as_host_ports, ()),
    _Setting("wait_http", _as_http_urls, ()),
    _Setting("wait_timeout", _as_seconds, 60.0),
    _Setting("migrate", _choice("0", "1", "wait", booleans=True), "0"),
    _Setting("migrate_url", _as_database_url, None),
    _Setting("migrate_revision", _as_nonempty, "head"),
    _Setting("alembic_config", _as_nonempty, "alembic.ini"),
    _Setting("migrate_lock_timeout", _as_seconds, 300.0),
    _Setting("migrate_unknown", _choice("fail", "ignore"), "fail"),
    _Setting("hf_models", _as_model_specs, ()),
    _Setting("hf_include", _as_list, ()),
    _Setting("hf_exclude", _as_list, ()),
    _Setting("hf_lockfile", _as_optional_path, None),
    _Setting("hf_offline", _as_bool, False),
    _Setting("hf_max_workers", _as_workers, 8),
    _Setting("user", _as_optional_text, None),
    _Setting("chown", _as_paths, ()),
)
SETTING_NAMES = tuple(setting.name for setting in _SETTINGS)

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
    wait_timeout: float = 60.0
    migrate: str = "0"
    migrate_url: str | None = None
    migrate_revision: str = "head"
    alembic_config: str = "alembic.ini"
    migrate_lock_timeout: float = 300.0
    migrate_unknown: str = "fail"
    hf_models: tuple[ModelSpec, ...] = ()
    hf_include: tuple[str, ...] = ()
    hf_exclude: tuple[str, ...] = ()
    hf_lockfile: Path | None = None
    hf_offline: bool = False
    hf_max_workers: int = 8
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
        setting and its source when a value is unknown, of the wrong type or unparsable.
        """
        options = {k: v for k, v in (options or {}).items() if v is not None}
        environ = dict(os.environ if environ is None else environ)
        cwd = Path.cwd() if cwd is None else cwd
        unknown = set(options) - set(SETTING_NAMES)
        if unknown:
            raise ConfigError(f"unknown option(s): {', '.join(sorted(unknown))}")

        config_file, file_values = _read_config_file(environ, cwd)
        file_source = f"file:{config_file}"
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for setting in _SETTINGS:
            raw, source, label = _pick(setting, options, environ, file_values, file_source)
            if source == DEFAULT:
                values[setting.name] = setting.default
            else:
                try:
                    values[setting.name] = setting.parse(raw)
                except ValueError as error:
                    raise ConfigError(f"{label} ({source}): {error}") from None
            sources[setting.name] = source
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


def variable_names() -> tuple[str, ...]:
    """Every environment variable entrykit reads for its settings (for docs and tests)."""
    names = [var for setting in _SETTINGS for var in setting.variables]
    return (*names, CONFIG_VARIABLE)


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
        if not path.is_file():
            raise ConfigError(f"{CONFIG_VARIABLE} (env): no such file {path}")
        return path, _table_values(_load_toml(path), path)
    path = cwd / "entrykit.toml"
    if path.is_file():
        return path, _table_values(_load_toml(path), path)
    path = cwd / "pyproject.toml"
    if path.is_file():
        table = _load_toml(path).get("tool", {}).get("entrykit")
        if isinstance(table, dict):
            return path, _table_values(table, path)
    return None, {}


def _load_toml(path: Path) -> dict[str, Any]:
    import tomllib  # only when there is a config file: it costs 3 ms of every start

    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read config file: {error}") from None


def _table_values(table: Mapping[str, Any], path: Path) -> dict[str, object]:
    """Config-file keys -> raw setting values; ``[[models]]`` tables become ModelSpecs."""
    values = dict(table)
    models = values.pop("models", None)
    unknown = sorted(set(values) - set(SETTING_NAMES))
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r}")
    if models is not None:
        specs = [*_as_model_specs_or_error(values.get("hf_models", ()), path)]
        specs += _model_tables(models, path)
        values["hf_models"] = specs
    return values


def _as_model_specs_or_error(raw: object, path: Path) -> tuple[ModelSpec, ...]:
    try:
        return _as_model_specs(raw)
    except ValueError as error:
        raise ConfigError(f"hf_models (file:{path}): {error}") from None


def _model_tables(models: object, path: Path) -> list[ModelSpec]:
    where = f"models (file:{path})"
    if not isinstance(models, list) or not all(isinstance(m, dict) for m in models):
        raise ConfigError(f"{where}: expected [[models]] tables")
    specs = []
    allowed = {"repo", "type", "revision", "include", "exclude"}
    for number, table in enumerate(models, start=1):
        unknown = sorted(set(table) - allowed)
        if unknown:
            raise ConfigError(f"{where}: table {number} has unknown key {unknown[0]!r}")
        if "repo" not in table:
            raise ConfigError(f"{where}: table {number} has no 'repo'")
        try:
            spec = ModelSpec.parse(_as_text(table["repo"]))
            repo_type = _choice(*REPO_TYPES)(table.get("type", spec.repo_type))
            revision = _as_text(table["revision"]) if "revision" in table else spec.revision
            include = _as_list(table.get("include", ()))
            exclude = _as_list(table.get("exclude", ()))
        except (ConfigError, ValueError) as error:
            raise ConfigError(f"{where}: table {number}: {error}") from None
        specs.append(ModelSpec(spec.repo_id, repo_type, revision or None, include, exclude))
    return specs


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
