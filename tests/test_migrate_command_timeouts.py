"""The migrate command's bounds (migrations/command.py): a check command that hangs is killed at
the deadline (wait mode: exit 20; ENTRYKIT_MIGRATE=1: exit 30, unless the database wait itself
failed: 20), and a misspelled migrate or check command is exit 30 before any database wait.
Real entrykit processes, real commands, a refused port for a database that is down."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from entrykit_process import clean_env, run_entrykit
from postgres_fixtures import free_port

from entrykit.errors import MigrationFailed
from entrykit.migrations.command import (
    check_migrate_commands_found,
    wait_for_head_with_command,
)
from entrykit.settings import Settings

HANGS_THEN_AT_HEAD = "sh -c 'sleep 30; exit 0'"  # at head, were it waited for


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "secrets").mkdir()
    return clean_env(
        tmp_path / "secrets", DATABASE_URL=f"sqlite:///{tmp_path}/app.db", ENTRYKIT_WAIT_TIMEOUT="2"
    )


def down_url() -> str:
    return f"postgresql://app:secret@127.0.0.1:{free_port()}/app"


def timed(args: list[str], env: dict[str, str], cwd: Path) -> tuple[float, int, str]:
    started = time.monotonic()
    result = run_entrykit(args, env, cwd=cwd)
    return time.monotonic() - started, result.returncode, result.stderr


# -- a check command that hangs ------------------------------------------------------------------


def test_wait_mode_kills_a_hanging_check_at_the_deadline(
    env: dict[str, str], tmp_path: Path
) -> None:
    env |= {
        "ENTRYKIT_MIGRATE": "wait",
        "ENTRYKIT_MIGRATE_COMMAND": "true",
        "ENTRYKIT_MIGRATE_CHECK_COMMAND": HANGS_THEN_AT_HEAD,
    }
    seconds, code, err = timed(["run", "--", "touch", "started"], env, tmp_path)
    assert code == 20, err
    assert seconds < 6, err
    assert "check-command" in err and "timed out" in err
    assert not (tmp_path / "started").exists()


def test_wait_mode_polls_a_slow_check_until_it_answers_in_time(
    env: dict[str, str], tmp_path: Path
) -> None:
    """Not every slow check is cut: one that answers within what is left passes."""
    env |= {
        "ENTRYKIT_WAIT_TIMEOUT": "20",
        "ENTRYKIT_MIGRATE": "wait",
        "ENTRYKIT_MIGRATE_COMMAND": "true",
        "ENTRYKIT_MIGRATE_CHECK_COMMAND": "sh -c 'sleep 1; exit 0'",
    }
    seconds, code, err = timed(["run", "--", "true"], env, tmp_path)
    assert code == 0, err
    assert seconds < 15, err


def test_migrate_1_kills_a_hanging_first_check_at_the_wait_deadline(
    env: dict[str, str], tmp_path: Path
) -> None:
    marker = tmp_path / "migrated"
    env |= {
        "ENTRYKIT_MIGRATE": "1",
        "ENTRYKIT_MIGRATE_COMMAND": f"touch {marker}",
        "ENTRYKIT_MIGRATE_CHECK_COMMAND": HANGS_THEN_AT_HEAD,
    }
    seconds, code, err = timed(["run", "--", "true"], env, tmp_path)
    assert code == 30, err
    assert seconds < 6, err
    failure = err.strip().splitlines()[-1]
    assert "check-command" in failure and "timed out" in failure, failure
    assert "ENTRYKIT_WAIT_TIMEOUT" in failure
    assert not marker.exists()


def test_entrykit_migrate_kills_a_hanging_check_too(env: dict[str, str], tmp_path: Path) -> None:
    env |= {
        "ENTRYKIT_MIGRATE_COMMAND": "true",
        "ENTRYKIT_MIGRATE_CHECK_COMMAND": HANGS_THEN_AT_HEAD,
    }
    seconds, code, err = timed(["migrate"], env, tmp_path)
    assert code == 30, err
    assert seconds < 6, err


def test_the_database_wait_failing_wins_over_a_hanging_check(
    env: dict[str, str], tmp_path: Path
) -> None:
    """Database down and the check hanging: both end at the deadline; the cause is the
    database (exit 20), not the check it kept from answering."""
    env |= {
        "DATABASE_URL": down_url(),
        "ENTRYKIT_WAIT": "0",  # no wait step of its own: the migrate step's wait is the one
        "ENTRYKIT_MIGRATE_COMMAND": "true",
        "ENTRYKIT_MIGRATE_CHECK_COMMAND": HANGS_THEN_AT_HEAD,
    }
    seconds, code, err = timed(["migrate"], env, tmp_path)
    assert code == 20, err
    assert seconds < 6, err
    assert "secret" not in err


# -- a misspelled command: before any wait -------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("ENTRYKIT_MIGRATE_COMMAND", "manage.pyy migrate --noinput"),
        ("ENTRYKIT_MIGRATE_CHECK_COMMAND", "manage.pyy migrate --check"),
    ],
)
def test_entrykit_migrate_misspelled_command_is_exit_30_before_the_wait(
    env: dict[str, str], tmp_path: Path, setting: str, value: str
) -> None:
    env |= {
        "DATABASE_URL": down_url(),
        "ENTRYKIT_WAIT_TIMEOUT": "30",
        "ENTRYKIT_MIGRATE_COMMAND": "true",
        "ENTRYKIT_MIGRATE_CHECK_COMMAND": "true",
        setting: value,
    }
    seconds, code, err = timed(["migrate"], env, tmp_path)
    assert code == 30, err
    assert seconds < 10, err
    assert "manage.pyy" in err and "not found" in err
    assert "waiting for" not in err


def test_entrykit_run_misspelled_migrate_command_is_exit_30_before_the_wait(
    env: dict[str, str], tmp_path: Path
) -> None:
    env |= {
        "DATABASE_URL": down_url(),
        "ENTRYKIT_WAIT_TIMEOUT": "30",
        "ENTRYKIT_MIGRATE": "1",
        "ENTRYKIT_MIGRATE_COMMAND": "manage.pyy migrate --noinput",
    }
    seconds, code, err = timed(["run", "--", "true"], env, tmp_path)
    assert code == 30, err
    assert seconds < 10, err
    assert "manage.pyy" in err and "not found" in err


def settings_for(tmp_path: Path, **values: object) -> Settings:
    return Settings.load({"database_url": down_url(), "wait_timeout": 30, **values}, {}, tmp_path)


def test_wait_mode_looks_up_the_check_command_only(tmp_path: Path) -> None:
    """Wait mode never runs the migrate command, so a missing one is no error there."""
    settings = settings_for(
        tmp_path, migrate="wait", migrate_command="not-here-xyz", migrate_check_command="true"
    )
    check_migrate_commands_found(settings)
    with pytest.raises(MigrationFailed, match="not-here-xyz") as caught:
        check_migrate_commands_found(settings._replace(migrate="1"))
    assert caught.value.exit_code == 30


def test_wait_for_head_with_a_misspelled_check_fails_before_the_wait(tmp_path: Path) -> None:
    settings = settings_for(
        tmp_path, migrate="wait", migrate_command="true", migrate_check_command="chek-xyz"
    )
    started = time.monotonic()
    with pytest.raises(MigrationFailed, match=r"chek-xyz.*not found"):
        wait_for_head_with_command(settings)
    assert time.monotonic() - started < 5
