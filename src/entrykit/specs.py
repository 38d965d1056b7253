"""What to prefetch and what to run, as configured: repo specs and start-up command specs.

``ModelSpec`` comes from ``ENTRYKIT_HF_MODELS`` or ``[[models]]`` tables, ``CommandSpec`` from
``ENTRYKIT_PRESTART`` (one command per line) or ``[[commands]]`` tables. Both are checked here,
once, so that a bad spec is a configuration error (exit 10) before any step runs.
"""

from __future__ import annotations

import os
import re
import shlex  # here, not in shell_line: the exec line is logged after the user switch
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from entrykit.errors import ConfigError
from entrykit.values import as_bool, as_list, as_positive_seconds, as_string, as_text, choice

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
            if not revision:
                raise ConfigError(f"repo spec {text!r}: empty revision after '@'")
            if any(c.isspace() for c in revision):
                raise ConfigError(f"repo spec {text!r}: the revision holds a blank")
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
            text = {key: _table_string(table, key) for key in ("repo", "type", "revision")}
            spec = ModelSpec.parse(text["repo"] or "")
            repo_type = choice(*REPO_TYPES)(text["type"] or spec.repo_type)
            prefix = (text["repo"] or "").partition(":")[0].strip()
            if text["type"] and prefix in REPO_TYPES and prefix != repo_type:
                raise ValueError(f"repo says {prefix}, type says {repo_type}: give one")
            if text["revision"] and spec.revision and text["revision"] != spec.revision:
                raise ValueError(f"repo says @{spec.revision}, revision says {text['revision']}")
            revision = text["revision"] if "revision" in table else spec.revision
            if revision and check_revision(revision):
                raise ValueError(f"revision {revision!r}: {check_revision(revision)}")
            include = as_list(table.get("include", ()))
            exclude = as_list(table.get("exclude", ()))
            local_dir = _table_string(table, "local_dir")
            if local_dir is not None and not local_dir:
                raise ValueError("local_dir is empty; give a folder or leave it out")
        except (ConfigError, ValueError) as error:
            raise ConfigError(f"{where}: table {number}: {error}") from None
        specs.append(
            ModelSpec(
                spec.repo_id,
                repo_type,
                revision or None,
                include,
                exclude,
                (path.parent / os.path.expanduser(local_dir)) if local_dir else None,
            )
        )
    return specs


def _table_string(table: dict[str, object], key: str) -> str | None:
    """``table[key]`` stripped, None when absent; ValueError naming the key when it is no
    string (``local_dir = 5`` would make a folder named 5)."""
    if key not in table:
        return None
    value = table[key]
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a string, not {type(value).__name__}")
    return value.strip()


# -- start-up commands -------------------------------------------------------------------------

# A command's name is also the name of its replica lock, which on SQLite becomes part of a file
# name (``app.db.NAME.once-lock``, hashed when that passes 255 bytes); PostgreSQL and MySQL hash
# long names.
NAME_MOST = 128
_NAME = r"[A-Za-z0-9][A-Za-z0-9._:-]*"
NAME_RULE = f"a letter or digit, then letters, digits and . _ : -, at most {NAME_MOST} characters"


class CommandSpec(NamedTuple):
    """A start-up command: run after migrations and prefetch, before exec."""

    name: str  # for log lines and the name of its replica lock
    argv: tuple[str, ...]
    once: bool = False  # one replica at a time, under the lock of this name
    timeout: float | None = None  # seconds; None: no limit
    env: tuple[tuple[str, str], ...] = ()  # added to the command's environment

    def __str__(self) -> str:
        return shell_line(self.argv)


def shell_line(argv: Sequence[str]) -> str:
    """``argv`` quoted for a shell, on one line (for log lines and ``plan``): an argument
    with a newline or another unprintable character is written as bash's ``$'a\\nb'``."""
    return " ".join(
        shlex.quote(arg)
        if arg.isprintable()
        else "$'" + arg.encode("unicode_escape").decode("ascii").replace("'", "\\'") + "'"
        for arg in argv
    )


def _name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a command and its lock, or None when it can."""
    if len(name) <= NAME_MOST and re.fullmatch(_NAME, name):
        return None
    shown = repr(name) if len(name) <= NAME_MOST else f"{name[:32]!r}... ({len(name)} characters)"
    return f"{shown}: {NAME_RULE}"


def check_lock_name(name: str) -> str:
    """``name`` when it can name a replica lock (see ``NAME_RULE``); raises ConfigError."""
    problem = _name_problem(name)
    if problem:
        raise ConfigError(f"lock name {problem}")
    return name


def split_command(text: str) -> tuple[str, ...]:
    """A command line split as a shell would (no expansion); ValueError when it is not one.

    As in a shell, a word that starts with an unquoted ``#`` starts a comment, which runs to
    the end of its line; ``a#b`` and ``'#x'`` are words.
    """
    if "\0" in text:  # exec cannot pass it: fail at load, not after the migrations
        raise ValueError("a command holds no NUL character")
    try:
        argv = tuple(shlex.split(_without_comments(text)))
    except ValueError as error:
        raise ValueError(f"cannot split {text!r}: {error}") from None
    if not argv:
        raise ValueError("empty command")
    return argv


_BLANKS = " \t\r\n"  # what shlex splits words at


def _without_comments(text: str) -> str:
    """``text`` without its shell comments and line continuations (backslash-newline), as a
    shell reads it. (shlex's own ``comments=True`` would also end ``a#b`` at the ``#``, where a
    shell keeps the word whole.) ValueError when a newline outside quotes ends one command and
    another follows: a shell would run two, and entrykit runs one."""
    kept: list[str] = []
    quote = ""  # the quote we are inside, if any
    word_start = True
    commands = 0  # lines holding words, so far
    line_has_words = False
    index = 0
    while index < len(text):
        char = text[index]
        if not quote and word_start and char == "#":
            end = text.find("\n", index)
            index = len(text) if end < 0 else end  # the newline itself is kept
            continue
        if char == "\\" and quote != "'":
            if text[index + 1 : index + 2] == "\n":  # a continued line: both go
                index += 2
                continue
            kept.append(text[index : index + 2])  # the next character is taken as it is
            index += 2
            word_start = False
            line_has_words = True
            continue
        if not quote and char == "\n":
            commands += line_has_words
            line_has_words = False
        elif char not in _BLANKS:
            line_has_words = True
            if commands:  # words after a whole command line
                raise ValueError("one command per line: a shell would run several")
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        kept.append(char)
        word_start = not quote and char in _BLANKS
        index += 1
    return "".join(kept)


def default_command_name(argv: tuple[str, ...]) -> str:
    """``MOD`` for ``python -m MOD``, else the program's file name, made a valid name:
    other characters become ``-``; ``command`` when nothing is left."""
    program = Path(argv[0]).name
    candidates = [program, "command"]
    if program.startswith("python") and len(argv) > 2 and argv[1] == "-m":
        candidates.insert(0, argv[2])
    for candidate in candidates:
        name = re.sub(r"[^A-Za-z0-9._:-]+", "-", candidate)
        name = re.sub(r"^[^A-Za-z0-9]+", "", name)[:NAME_MOST].rstrip("-")
        if name:
            return name
    return "command"


def as_command_specs(raw: object) -> tuple[CommandSpec, ...]:
    """``ENTRYKIT_PRESTART``: one command per line (blank lines and ``#`` lines skipped).

    Lines end at ``\\n`` only (a trailing ``\\r`` is dropped): ``str.splitlines`` would also
    end one at U+2028 or a form feed, which a command may hold.
    """
    if isinstance(raw, list | tuple) and all(isinstance(item, CommandSpec) for item in raw):
        return tuple(raw)
    if isinstance(raw, list | tuple):
        lines = [as_text(item) for item in raw]
    else:
        lines = [line.removesuffix("\r") for line in as_string(raw).split("\n")]
    specs = []
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if line and not line.startswith("#"):
            try:
                argv = split_command(line)
            except ValueError as error:
                raise ValueError(f"line {number}: {error}") from None
            specs.append(CommandSpec(default_command_name(argv), argv))
    return tuple(specs)


def command_tables(commands: object, path: Path) -> list[CommandSpec]:
    """``[[commands]]`` tables -> CommandSpecs; raises ConfigError naming the table and key
    (``commands[2].timeout (file:PATH): ...``, tables and list items counted from 1)."""
    if not isinstance(commands, list) or not all(isinstance(c, dict) for c in commands):
        raise ConfigError(f"commands (file:{path}): expected [[commands]] tables")
    return [
        _command_table(table, f"commands[{number}]", f"file:{path}")
        for number, table in enumerate(commands, start=1)
    ]


_COMMAND_KEYS = {"name", "run", "once", "timeout", "env"}


def _command_table(table: dict[str, object], where: str, source: str) -> CommandSpec:
    def fail(key: str, problem: str) -> ConfigError:
        return ConfigError(f"{where}{key} ({source}): {problem}")

    unknown = sorted(set(table) - _COMMAND_KEYS)
    if unknown:
        raise fail("", f"unknown key {unknown[0]!r}")
    if "run" not in table:
        raise fail("", "no 'run'")
    try:
        argv = _run_argv(table["run"])
    except _BadItem as error:
        raise fail(f".run{error.key}", error.problem) from None
    try:
        env = _env_pairs(table.get("env", {}))
    except _BadItem as error:
        raise fail(f".env{error.key}", error.problem) from None
    name = default_command_name(argv)
    if "name" in table:  # only a name the user wrote can be wrong
        written = table["name"]
        if not isinstance(written, str):  # 5 is not silently the name "5"
            raise fail(".name", f"expected a string, got {type(written).__name__}")
        name = written
        if _name_problem(name):
            raise fail(".name", f"{_name_problem(name)}")
    try:
        once = as_bool(table["once"]) if "once" in table else False
    except ValueError:
        raise fail(".once", f"expected true or false, got {_shown(table['once'])}") from None
    try:
        timeout = as_positive_seconds(table["timeout"]) if "timeout" in table else None
    except ValueError as error:
        raise fail(".timeout", f"{error}, got {_shown(table['timeout'])}") from None
    return CommandSpec(name, argv, once, timeout, env)


class _BadItem(Exception):
    """A bad item below a key: where (``[2]``, ``.SEED``) and what is wrong."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(problem)
        self.key, self.problem = key, problem


def _run_argv(run: object) -> tuple[str, ...]:
    """``run``: a list is exec form, its items passed exactly as written; a string is split
    like a shell would."""
    if isinstance(run, str):
        try:
            return split_command(run.strip())
        except ValueError as error:
            raise _BadItem("", str(error)) from None
    if not isinstance(run, list):
        raise _BadItem("", f"expected a string or a list, got {type(run).__name__}")
    argv = []
    for number, item in enumerate(run, start=1):
        try:
            arg = _string_or_integer(item)
        except ValueError as error:
            raise _BadItem(f"[{number}]", str(error)) from None
        if "\0" in arg:
            raise _BadItem(f"[{number}]", "an argument holds no NUL character")
        argv.append(arg)
    if not argv or not argv[0]:
        raise _BadItem("", "empty command")
    return tuple(argv)


def _env_pairs(env: object) -> tuple[tuple[str, str], ...]:
    """``env``: a table of variable names to strings (or integers), kept as written."""
    if not isinstance(env, dict):
        raise _BadItem("", f"expected a table of strings, got {_shown(env)}")
    pairs = []
    for key, raw in env.items():
        where = f".{key}" if re.fullmatch(r"[A-Za-z0-9_-]+", key) else f".{_quoted(key)}"
        if not key or "=" in key or "\0" in key:
            raise _BadItem(where, "a variable name is not empty and holds no '=' or NUL")
        try:
            value = _string_or_integer(raw)
        except ValueError as error:
            raise _BadItem(where, str(error)) from None
        if "\0" in value:
            raise _BadItem(where, "a value holds no NUL character")
        pairs.append((key, value))
    return tuple(pairs)


def _string_or_integer(raw: object) -> str:
    """An argument or ``env`` value: a string as written, or a TOML integer as its digits
    (compose takes numbers in ``environment`` too). A float is refused: its text is not kept
    (``1e3`` would become ``1000.0``, ``0.10`` ``0.1``). Raises ValueError."""
    if isinstance(raw, str):
        return raw
    if isinstance(raw, int) and not isinstance(raw, bool):
        return str(raw)
    if isinstance(raw, float):
        raise ValueError(f"expected a string, got the float {raw!r}: write it in quotes")
    raise ValueError(f"expected a string, got {type(raw).__name__}")


def _quoted(key: str) -> str:
    """A key as TOML writes one that is not bare: ``"A=B"``, ``"x\\u0000y"``."""
    import json

    return json.dumps(key)


def _shown(raw: object) -> str:
    """A bad TOML value in a message: scalars as written, others by their type."""
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, str | int | float):
        return repr(raw)
    return "a table" if isinstance(raw, dict) else f"a {type(raw).__name__}"
