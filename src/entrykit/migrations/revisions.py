"""Revisions of the migration scripts: the target, what is pending, what the database is at."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from entrykit.errors import ConfigError, MigrationFailed, UnknownRevision

if TYPE_CHECKING:
    from alembic.script import ScriptDirectory

log = logging.getLogger("entrykit.migrate")


def resolve_target(script: ScriptDirectory, revision: str) -> tuple[str, ...]:
    """The heads ``revision`` stands for. Raises MigrationFailed for an ambiguous ``head`` and
    ConfigError for a revision the scripts don't have."""
    from alembic.script.revision import MultipleHeads, RevisionError
    from alembic.util import CommandError

    try:
        found = script.revision_map.get_revisions(revision)
        return tuple(s.revision for s in found if s is not None and not isinstance(s, str))
    except MultipleHeads:
        heads = ", ".join(script.get_heads())
        # Exit 30, not 10: the settings are fine, the scripts are not (two branches were never
        # merged), and the image must be rebuilt.
        raise MigrationFailed(
            f"the migration scripts have several heads ({heads}); nothing was applied. "
            "Merge them (`alembic merge heads`) or set ENTRYKIT_MIGRATE_REVISION=heads "
            "to apply every branch"
        ) from None
    except (RevisionError, CommandError) as error:
        raise ConfigError(f"migration target {revision!r}: {error}") from None


def _ancestors(script: ScriptDirectory, heads: tuple[str, ...]) -> set[str]:
    found: set[str] = set()
    for head in heads:
        found.update(s.revision for s in script.iterate_revisions(head, "base"))
    return found


def unknown_revisions(script: ScriptDirectory, heads: tuple[str, ...]) -> list[str]:
    """The heads in ``heads`` that the scripts do not have."""
    from alembic.script.revision import RevisionError
    from alembic.util import CommandError

    unknown = []
    for head in heads:
        try:
            script.revision_map.get_revision(head)
        except (RevisionError, CommandError):
            unknown.append(head)
    return unknown


def pending_revisions(
    script: ScriptDirectory, current: tuple[str, ...], target: tuple[str, ...]
) -> tuple[str, ...]:
    """What an upgrade from ``current`` to ``target`` applies, oldest first."""
    missing = _ancestors(script, target) - _ancestors(script, current)
    oldest_first = [s.revision for s in reversed(list(script.walk_revisions()))]
    return tuple(rev for rev in oldest_first if rev in missing)


def describe(script: ScriptDirectory, revisions: tuple[str, ...]) -> str:
    """``0002 (create jobs), 0003 (index)``: revisions with the first line of their doc."""
    if not revisions:
        return "base (empty)"
    parts = []
    for rev in revisions:
        try:
            doc = (script.get_revision(rev).doc or "").strip().splitlines()
        except Exception:
            doc = []
        parts.append(f"{rev} ({doc[0]})" if doc else rev)
    return ", ".join(parts)


def revision_files(script: ScriptDirectory, revisions: tuple[str, ...]) -> dict[str, str]:
    """The file of each revision, mapped to its description (for naming a failed one)."""
    files = {}
    for rev in revisions:
        try:
            files[script.get_revision(rev).path] = describe(script, (rev,))
        except Exception:  # a revision without a file cannot be the one that failed
            continue
    return files


def check_known(script: ScriptDirectory, current: tuple[str, ...], unknown_policy: str) -> bool:
    """False (after a warning) when the database is ahead and ``unknown_policy`` is
    ``ignore``. Raises UnknownRevision otherwise."""
    unknown = unknown_revisions(script, current)
    if not unknown:
        return True
    names = ", ".join(unknown)
    if unknown_policy == "ignore":
        log.warning(
            "the database is at revision %s, which these migration scripts do not know "
            "(a newer release migrated it?); going on without migrating "
            "(ENTRYKIT_MIGRATE_UNKNOWN=ignore)",
            names,
        )
        return False
    raise UnknownRevision(
        f"the database is at revision {names}, which these migration scripts do not know: "
        "a newer release has migrated it. Deploy that release, or set "
        "ENTRYKIT_MIGRATE_UNKNOWN=ignore to start anyway"
    )
