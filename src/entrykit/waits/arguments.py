"""``entrykit wait``'s arguments as settings: blank ones refused, ``--tcp`` split as
ENTRYKIT_WAIT_TCP is, ``${VAR}`` ones held back until the secrets are loaded, and errors that
name the option as the user typed it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from entrykit.errors import ConfigError
from entrykit.waits.urls import has_variables

if TYPE_CHECKING:
    pass

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
