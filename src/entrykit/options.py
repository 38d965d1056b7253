"""Command-line options as the user typed them.

An option fills a setting of another name (``--timeout`` fills ``wait_timeout``), and a bad
value is reported by the setting's parser: :func:`named_as_typed` names the option instead.
An option given an empty value is nearly always an unset shell variable (``--lock "$LOCK"``):
:func:`check_not_empty` makes it an error rather than "not given". :func:`positive_seconds`
checks a time limit the way click checks a type.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from entrykit.errors import ConfigError
from entrykit.values import as_positive_seconds

if TYPE_CHECKING:
    import click

    from entrykit.settings import Settings

SUBCOMMANDS = ("run", "wait", "migrate", "prefetch", "once", "secrets", "healthcheck", "plan")

# The settings prefetch's options fill, and how the user typed them.
PREFETCH_OPTIONS = {
    f"--hf-{name} (option)": typed
    for name, typed in [
        ("models", "SPEC (argument)"),
        ("include", "--include (option)"),
        ("exclude", "--exclude (option)"),
        ("lockfile", "--lock (option)"),
        ("local-dir", "--local-dir (option)"),
        ("max-workers", "--max-workers (option)"),
    ]
}


def named_as_typed(load: Callable[[], Settings], typed: Mapping[str, str]) -> Settings:
    """``load()``; a ConfigError about a setting an option filled names the option instead
    (``--timeout (option)``, not ``--wait-timeout (option)``): ``typed`` maps the one to the
    other."""
    try:
        return load()
    except ConfigError as error:
        text = str(error)
        for label, option in typed.items():
            if text.startswith(label):
                raise ConfigError(option + text[len(label) :]) from None
        raise


def check_not_empty(given: Mapping[str, str | None]) -> None:
    """ConfigError naming the first option given an empty or blank value."""
    for option, value in given.items():
        if value is not None and not value.strip():
            raise ConfigError(f"{option} (option): empty; give a value or leave it out")


def positive_seconds(_: click.Context, __: click.Parameter, value: float | None) -> float | None:
    """A click callback for a time limit: finite seconds above 0 (nan and inf are usage
    errors, exit 2, as 0 and negatives are)."""
    import click

    try:
        return None if value is None else as_positive_seconds(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


def once_args(args: list[str]) -> list[str]:
    """``once NAME CMD...`` with the ``--`` that ends once's options put in when left out,
    as ``run`` does: ``once job python --version`` runs ``python --version``, and a ``--``
    of CMD's own (``once job pytest -- -k x``) stays CMD's."""
    index = 1
    seen_name = False
    while index < len(args):
        word = args[index]
        if word == "--" or word in ("-h", "--help", "--version"):
            return args  # click takes it from here
        if word == "--timeout":
            index += 2
        elif word.startswith("--timeout="):
            index += 1
        elif word.startswith("-"):  # a mistyped option, not a lock name or a program
            import click

            raise click.NoSuchOption(word)
        elif not seen_name:
            seen_name = True
            index += 1
        else:
            return [*args[:index], "--", *args[index:]]  # CMD starts here
    return args


def fast_run_command(args: list[str]) -> list[str] | None:
    """The command of ``entrykit [--] CMD...`` / ``entrykit run [--] CMD...``, else None."""
    if args[0] not in SUBCOMMANDS and not args[0].startswith("-"):
        return args
    if args[0] == "--":  # as with tini: everything after it is the command
        return args[1:]
    if args[0] == "run":
        rest = args[1:]
        if rest and rest[0] == "--":
            return rest[1:]
        if not rest or not rest[0].startswith("-"):
            return rest
    return None
