"""What to prefetch and what to run, as configured: repo specs and start-up command specs.

``ModelSpec`` comes from ``ENTRYKIT_HF_MODELS`` or ``[[models]]`` tables, ``CommandSpec`` from
``ENTRYKIT_PRESTART`` (one command per line) or ``[[commands]]`` tables. Both are checked here,
once, so that a bad spec is a configuration error (exit 10) before any step runs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

from entrykit.errors import ConfigError
from entrykit.values import as_bool, as_list, as_seconds, as_text, choice

# Records are NamedTuples, not dataclasses: importing dataclasses (and inspect) would cost
# every container start about 5 ms, a sixth of a bare Python start-up.

REPO_TYPES = ("model", "dataset", "space")
# OWNER/NAME, or NAME alone for the Hub's canonical repos (gpt2, bert-base-uncased). A string,
# compiled by `re` on first use: compiling it at import would cost every container start.
_REPO_ID = r"(?:[A-Za-z0-9][A-Za-z0-9._-]*/)?[A-Za-z0-9][A-Za-z0-9._-]*"


def check_revision(revision: str) -> str | None:
    """Why ``revision`` could name a path outside the cache, or None when it is safe.

    A revision becomes a file name under ``refs/`` (branches may hold ``/``: ``refs/pr/1``),
    so no part may be empty, ``.`` or ``..``, and no backslash or leading ``/`` is allowed.
    """
    if any(c.isspace() or c == "\\" or ord(c) < 32 for c in revision):
        return "a revision holds no blank, control character or backslash"
    if revision.startswith("/") or any(part in ("", ".", "..") for part in revision.split("/")):
        return "a revision has no empty, '.' or '..' part and no leading '/'"
    return None


class ModelSpec(NamedTuple):
    """One Hugging Face repo to prefetch: ``[TYPE:]OWNER/NAME[@REVISION]`` plus patterns."""

    repo_id: str
    repo_type: str = "model"
    revision: str | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    local_dir: Path | None = None  # also place the files here as plain files

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
            problem = check_revision(revision)
            if problem:
                raise ConfigError(f"repo spec {text!r}: {problem}")
        if not re.fullmatch(_REPO_ID, spec) or ".." in spec:
            raise ConfigError(f"repo spec {text!r}: expected [TYPE:][OWNER/]NAME[@REVISION]")
        return cls(repo_id=spec, repo_type=repo_type, revision=revision)

    def __str__(self) -> str:
        prefix = "" if self.repo_type == "model" else f"{self.repo_type}:"
        suffix = f"@{self.revision}" if self.revision else ""
        return f"{prefix}{self.repo_id}{suffix}"


def as_model_specs(raw: object) -> tuple[ModelSpec, ...]:
    if isinstance(raw, list | tuple) and all(isinstance(item, ModelSpec) for item in raw):
        return tuple(raw)
    specs = []
    for text in as_list(raw):
        try:
            specs.append(ModelSpec.parse(text))
        except ConfigError as error:
            raise ValueError(str(error)) from None
    return tuple(specs)


def model_specs_or_error(raw: object, path: Path) -> tuple[ModelSpec, ...]:
    try:
        return as_model_specs(raw)
    except ValueError as error:
        raise ConfigError(f"hf_models (file:{path}): {error}") from None


def model_tables(models: object, path: Path) -> list[ModelSpec]:
    """``[[models]]`` tables -> ModelSpecs; raises ConfigError naming the table and key."""
    where = f"models (file:{path})"
    if not isinstance(models, list) or not all(isinstance(m, dict) for m in models):
        raise ConfigError(f"{where}: expected [[models]] tables")
    specs = []
    allowed = {"repo", "type", "revision", "include", "exclude", "local_dir"}
    for number, table in enumerate(models, start=1):
        unknown = sorted(set(table) - allowed)
        if unknown:
            raise ConfigError(f"{where}: table {number} has unknown key {unknown[0]!r}")
        if "repo" not in table:
            raise ConfigError(f"{where}: table {number} has no 'repo'")
        try:
            spec = ModelSpec.parse(as_text(table["repo"]))
            repo_type = choice(*REPO_TYPES)(table.get("type", spec.repo_type))
            revision = as_text(table["revision"]) if "revision" in table else spec.revision
            if revision and check_revision(revision):
                raise ValueError(f"revision {revision!r}: {check_revision(revision)}")
            include = as_list(table.get("include", ()))
            exclude = as_list(table.get("exclude", ()))
            local_dir = as_text(table["local_dir"]) if "local_dir" in table else ""
        except (ConfigError, ValueError) as error:
            raise ConfigError(f"{where}: table {number}: {error}") from None
        specs.append(
            ModelSpec(
                spec.repo_id,
                repo_type,
                revision or None,
                include,
                exclude,
                (path.parent / local_dir) if local_dir else None,
            )
        )
    return specs


# -- start-up commands -------------------------------------------------------------------------


class CommandSpec(NamedTuple):
    """A start-up command: run after migrations and prefetch, before exec."""

    name: str  # for log lines and the name of its replica lock
    argv: tuple[str, ...]
    once: bool = False  # one replica at a time, under the lock of this name
    timeout: float | None = None  # seconds; None: no limit
    env: tuple[tuple[str, str], ...] = ()  # added to the command's environment

    def __str__(self) -> str:
        import shlex

        return shlex.join(self.argv)


def split_command(text: str) -> tuple[str, ...]:
    """A command line split as a shell would (no expansion); ValueError when it is not one."""
    import shlex

    try:
        argv = tuple(shlex.split(text))
    except ValueError as error:
        raise ValueError(f"cannot split {text!r}: {error}") from None
    if not argv:
        raise ValueError("empty command")
    return argv


def default_command_name(argv: tuple[str, ...]) -> str:
    """``MOD`` for ``python -m MOD``, else the program's file name."""
    program = Path(argv[0]).name
    if program.startswith("python") and len(argv) > 2 and argv[1] == "-m":
        return argv[2]
    return program


def as_command_specs(raw: object) -> tuple[CommandSpec, ...]:
    """``ENTRYKIT_PRESTART``: one command per line (blank lines and ``#`` lines skipped)."""
    if isinstance(raw, list | tuple) and all(isinstance(item, CommandSpec) for item in raw):
        return tuple(raw)
    lines = [as_text(item) for item in raw] if isinstance(raw, list | tuple) else None
    if lines is None:
        lines = as_text(raw).splitlines()
    specs = []
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            argv = split_command(line)
            specs.append(CommandSpec(default_command_name(argv), argv))
    return tuple(specs)


def command_tables(commands: object, path: Path) -> list[CommandSpec]:
    """``[[commands]]`` tables -> CommandSpecs; raises ConfigError naming the table and key."""
    where = f"commands (file:{path})"
    if not isinstance(commands, list) or not all(isinstance(c, dict) for c in commands):
        raise ConfigError(f"{where}: expected [[commands]] tables")
    specs = []
    allowed = {"name", "run", "once", "timeout", "env"}
    for number, table in enumerate(commands, start=1):
        unknown = sorted(set(table) - allowed)
        if unknown:
            raise ConfigError(f"{where}: table {number} has unknown key {unknown[0]!r}")
        if "run" not in table:
            raise ConfigError(f"{where}: table {number} has no 'run'")
        try:
            specs.append(_command_table(table))
        except ValueError as error:
            raise ConfigError(f"{where}: table {number}: {error}") from None
    return specs


def _command_table(table: dict[str, object]) -> CommandSpec:
    run = table["run"]
    if isinstance(run, list):
        argv = tuple(as_text(arg) for arg in run)
        if not argv or not argv[0]:
            raise ValueError("'run' is an empty command")
    else:
        argv = split_command(as_text(run))
    name = as_text(table["name"]) if "name" in table else default_command_name(argv)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:-]*", name):
        raise ValueError(f"name {name!r}: letters, digits and . _ : - only")
    timeout = as_seconds(table["timeout"]) if "timeout" in table else None
    env = table.get("env", {})
    if not isinstance(env, dict):
        raise ValueError("'env' must be a table of strings")
    pairs = tuple((str(key), as_text(value)) for key, value in env.items())
    once = as_bool(table["once"]) if "once" in table else False
    return CommandSpec(name, argv, once, timeout or None, pairs)
