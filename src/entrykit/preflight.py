"""What ``run`` refuses before its first step, shared with ``plan``.

Each check reads the settings only (no connection, no download), after the secrets are
loaded since a URL may come from one. ``plan`` runs the same checks, so that a setting
entrykit rejects fails where the plan is checked (CI) rather than in a rollout.
"""

from __future__ import annotations

from entrykit.errors import ConfigError
from entrykit.settings import Settings

_SET_A_DATABASE = "set DATABASE_URL (or ENTRYKIT_MIGRATE_URL)"


def check_settings(settings: Settings) -> None:
    """Raise ConfigError (exit 10) for settings ``run`` would stop at before any work: a
    migration or a ``once`` command without a database, an Alembic config missing or broken,
    wait mode with a migrate command but no check command, a bad or unknown wait URL (an
    unset ``${VAR}`` and a protocol client not installed included), a local dir for several
    repos or one folder for two.
    """
    check_once_has_database(settings)
    _check_migrate_has_database(settings)
    if settings.migrate in ("1", "wait") and not settings.migrate_command:
        from entrykit.migrations.alembic_config import check_alembic_config

        check_alembic_config(settings)  # a missing alembic.ini costs no wait
    _check_wait_urls(settings)
    _check_local_dir(settings)


def check_once_has_database(settings: Settings) -> None:
    """ConfigError (exit 10) when a ``once = true`` command has no database for its lock."""
    if settings.effective_migrate_url:
        return
    for spec in settings.prestart:
        if spec.once:
            raise ConfigError(
                f"command {spec.name} has once = true, which needs a database for its "
                f"cross-replica lock: {_SET_A_DATABASE}"
            )


def _check_migrate_has_database(settings: Settings) -> None:
    if settings.migrate == "wait" and settings.migrate_command:
        if not settings.migrate_check_command:
            raise ConfigError(
                "ENTRYKIT_MIGRATE=wait with ENTRYKIT_MIGRATE_COMMAND needs "
                "ENTRYKIT_MIGRATE_CHECK_COMMAND, to know when the database is at head"
            )
        return  # it polls the check command: no database needed
    if settings.effective_migrate_url:
        return
    if settings.migrate == "1" and settings.migrate_command:
        raise ConfigError(
            "ENTRYKIT_MIGRATE_COMMAND runs under the replica lock, which needs the database: "
            + _SET_A_DATABASE
        )
    if settings.migrate == "1":
        raise ConfigError(f"ENTRYKIT_MIGRATE=1: nothing to migrate: {_SET_A_DATABASE}")
    if settings.migrate == "wait":
        raise ConfigError(f"ENTRYKIT_MIGRATE=wait needs the database: {_SET_A_DATABASE}")


def _check_wait_urls(settings: Settings) -> None:
    if not settings.waits_for_anything:
        return
    from entrykit.waits.run import dependency_checks  # only when there is something to wait for

    dependency_checks(settings)


def _check_local_dir(settings: Settings) -> None:
    if any(spec.local_dir is not None for spec in settings.hf_models):
        from entrykit.hub.arguments import check_local_dirs

        check_local_dirs(settings.hf_models)  # two repos in one folder
    repos = set(settings.hf_models)
    if settings.hf_local_dir is not None and len(repos) > 1:
        raise ConfigError(
            f"ENTRYKIT_HF_LOCAL_DIR takes exactly one repo, not {len(repos)}; "
            "give each repo its own local_dir in [[models]] tables"
        )
