"""What ``entrykit run`` would do, without touching the network or a database."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from entrykit.errors import SecretError
from entrykit.logs import mask_url
from entrykit.preflight import check_settings
from entrykit.secretfiles import LoadedSecret, load_secrets
from entrykit.settings import Settings, describe, join_url_pieces, variable_names
from entrykit.specs import CommandSpec, shell_line


@dataclass(frozen=True)
class Plan:
    """Settings with their sources, secrets by name/source/length, and the steps."""

    settings: Settings
    secrets: tuple[LoadedSecret, ...]
    secret_error: SecretError | None
    steps: tuple[str, ...]

    def as_dict(self) -> dict[str, object]:
        return {
            "settings": [
                {"name": name, "value": _shown(name, value), "source": source}
                for name, value, source in self.settings.items()
            ],
            "config_file": str(self.settings.config_file or ""),
            "secrets": [
                {"name": s.name, "source": s.source, "length": s.length} for s in self.secrets
            ],
            "secret_error": str(self.secret_error) if self.secret_error else None,
            "commands": [
                {
                    "name": spec.name,
                    "argv": list(spec.argv),
                    "once": spec.once,
                    "timeout": spec.timeout,
                    "env": [name for name, _ in spec.env],  # names only: values may be secret
                }
                for spec in self.settings.prestart
            ],
            "steps": list(self.steps),
        }

    def as_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2)

    def as_text(self) -> str:
        lines = ["settings:"]
        width = max(len(name) for name in variable_names())
        for name, value, source in self.settings.items():
            lines.append(f"  {name:<{width}} {_shown(name, value) or '-':<30} {source}")
        lines.append("secrets:")
        lines += [f"  {s.name:<{width}} {s.source:<30} {s.length} bytes" for s in self.secrets]
        if not self.secrets and not self.secret_error:
            lines.append("  (none)")
        if self.secret_error:
            lines.append(f"  error: {self.secret_error}")
        lines.append("steps:")
        lines += [f"  {number}. {text}" for number, text in enumerate(self.steps, start=1)]
        return "\n".join(lines)


def make_plan(settings: Settings, command: Sequence[str] = ()) -> Plan:
    """Describe the run. Secret files are read (for their lengths) but never shown.

    Raises ConfigError when ``run`` would reject these settings before its first step
    (:func:`entrykit.preflight.check_settings`); a secret that cannot be read is kept in
    ``secret_error``, since ``run`` would stop at it first.
    """
    try:
        secret_set = load_secrets(settings)
        secrets, secret_error = secret_set.secrets, None
        environ = dict(settings.environ)
        secret_set.apply(environ)
        settings = settings.with_environ(environ)
    except SecretError as error:
        secrets, secret_error = (), error
    if secret_error is None:
        check_settings(settings)  # the same checks, after the secrets, as run's
    return Plan(settings, secrets, secret_error, tuple(_steps(settings, command)))


def _shown(name: str, value: object) -> str:
    if name == "prestart" and isinstance(value, tuple):
        return "; ".join(f"{spec.name}: {spec}" for spec in value)
    if name == "hf_models" and isinstance(value, tuple):  # specs are tuples: not flattened
        return ",".join(str(spec) for spec in value) or "-"
    text = describe(value)
    return mask_url(text) if name.endswith("_url") or name == "wait_for" else text


def _steps(settings: Settings, command: Sequence[str]) -> list[str]:
    steps = [f"secrets: load {len(settings.secrets)} entries from {settings.secrets_dir}"]
    waits = []
    if settings.should_wait_for_database and settings.database_url:
        waits.append(f"database {mask_url(settings.database_url)}")
    waits += [f"tcp {target}" for target in settings.wait_tcp]
    waits += [f"http {url}" for url in settings.wait_http]
    waits += [mask_url(url) for url in join_url_pieces(settings.wait_for)]
    if waits:
        steps.append(f"wait: {', '.join(waits)} (timeout {settings.wait_timeout:g} s)")
    side_by_side = []
    if settings.migrate == "1":
        side_by_side.append(_migrate_step(settings))
    elif settings.migrate == "wait":
        side_by_side.append(_wait_for_head_step(settings))
    if settings.hf_models:
        repos = ", ".join(str(spec) for spec in settings.hf_models)
        side_by_side.append(f"prefetch: {repos} into the Hugging Face cache")
    elif settings.hf_lockfile is not None:
        side_by_side.append(
            f"prefetch: the repos of {settings.hf_lockfile} into the Hugging Face cache"
        )
    if side_by_side:
        steps.append(
            " | ".join(side_by_side) + (" (side by side)" if len(side_by_side) > 1 else "")
        )
    if settings.user:
        steps.append(f"user: become {settings.user}")
    steps += [_command_step(spec) for spec in settings.prestart]
    steps.append(f"exec: {shell_line(command)}" if command else "exit 0 (no command)")
    return steps


def _migrate_step(settings: Settings) -> str:
    if not settings.migrate_command:
        return (
            f"migrate: alembic upgrade to {settings.migrate_revision} with "
            f"{settings.alembic_config}"
        )
    text = f"migrate: {settings.migrate_command} under the migration lock"
    if settings.migrate_check_command:
        text += f", unless {settings.migrate_check_command} exits 0"
    return text


def _wait_for_head_step(settings: Settings) -> str:
    if not settings.migrate_command:
        return "migrate: wait until the database is at head"
    if not settings.migrate_check_command:
        return "migrate: wait mode needs ENTRYKIT_MIGRATE_CHECK_COMMAND (exit 10)"
    return f"migrate: wait until {settings.migrate_check_command} exits 0"


def _command_step(spec: CommandSpec) -> str:
    """``prestart: initial-data: python -m app.initial_data (once, under the lock
    initial-data; timeout 120 s; env SEED)``: env values are not shown, only names."""
    details = []
    if spec.once:
        details.append(f"once, under the lock {spec.name}")
    if spec.timeout is not None:
        details.append(f"timeout {spec.timeout:g} s")
    if spec.env:
        details.append("env " + ",".join(name for name, _ in spec.env))
    suffix = f" ({'; '.join(details)})" if details else ""
    return f"prestart: {spec.name}: {spec}{suffix}"
