"""``entrykit wait``'s arguments as settings: blank ones refused, ``--tcp`` split as
ENTRYKIT_WAIT_TCP is, ``${VAR}`` ones held back until the secrets are loaded, and errors that
name the option as the user typed it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from entrykit.errors import ConfigError
from entrykit.waits.urls import has_variables

if TYPE_CHECKING:
    from entrykit.settings import Settings

# Expanded here, after the secrets; URL arguments (wait_for) are expanded by the wait itself.
_EXPANDED_LATER = ("database_url", "wait_tcp", "wait_http")

# The options fill settings of other names: a setting's error is reworded to name the option.
WAIT_OPTIONS = {
    "--wait-timeout (option)": "--timeout (option)",
    "--wait-tcp (option)": "--tcp (option)",
    "--wait-http (option)": "--http (option)",
    "--database-url (option)": "--db (option)",
    "--wait-for (option)": "URL (argument)",
}


def wait_targets(given: Mapping[str, tuple[str, ...]]) -> dict[str, object]:
    """The settings that ``entrykit wait``'s arguments (``URL``, ``--db``, ``--tcp``,
    ``--http``: the values given) stand for; none given: none, the configured ones are kept.

    Raises ConfigError for an empty or blank argument: ``wait "$UNSET"`` must neither wait
    for nothing and succeed nor fall back to the configured dependencies.
    """
    for name, values in given.items():
        if any(not value.strip() for value in values):
            raise ConfigError(f"wait: {name} is empty (an unset variable?)")
    if not any(given.values()):
        return {}
    tcp = [item.strip() for value in given.get("--tcp", ()) for item in value.split(",")]
    if any(not item for item in tcp):
        raise ConfigError("wait: --tcp holds an empty item")
    database = given.get("--db", ())
    return {
        "database_url": database[0] if database else None,
        "wait": "1" if database else "0",
        "wait_tcp": tcp,
        "wait_http": list(given.get("--http", ())),
        "wait_for": list(given.get("URL", ())),
    }


def held_back(targets: Mapping[str, object]) -> tuple[dict[str, object], dict[str, object]]:
    """``targets`` to load before the secrets (the ones holding ``${VAR}`` left empty, so
    that neither they nor the environment's value is used yet), and those ones, to expand
    with :func:`entrykit.waits.urls.expand_targets` once the secrets are loaded."""
    later = {name: targets[name] for name in _EXPANDED_LATER if has_variables(targets.get(name))}
    empty = {name: [] if isinstance(value, list) else "" for name, value in later.items()}
    return {**targets, **empty}, later


def wait_settings(
    given: Mapping[str, tuple[str, ...]],
    timeout: str | None,
    load: Callable[[dict[str, object]], Settings],
) -> Settings:
    """The settings ``entrykit wait`` waits with: ``load`` (options > environment > file)
    with its arguments, the secrets loaded, then ``${VAR}`` in ``--db``, ``--tcp`` and
    ``--http`` replaced. Raises ConfigError (naming the option as typed) or SecretError."""
    from entrykit.options import named_as_typed
    from entrykit.pipeline import load_secrets_step
    from entrykit.settings import Settings
    from entrykit.waits.urls import expand_targets

    targets = wait_targets(given)  # before the secrets: an empty one is a typo
    options: dict[str, object] = {"wait_timeout": timeout}
    first, later = held_back(targets)  # ${VAR} in --db, --tcp, --http
    settings, environ = load_secrets_step(
        named_as_typed(lambda: load(options | first), WAIT_OPTIONS)
    )
    if not later:
        return settings
    expanded = options | targets | expand_targets(later, environ)
    return named_as_typed(lambda: Settings.load(expanded, environ, settings.cwd), WAIT_OPTIONS)
