"""A replica lock's own connection failing (locks.py, lock_hold.py): it cannot be opened (exit 20
or 21, classified as the database wait classifies it, one line naming the lock), or its session
is ended while the replica waits for the lock (exit 31, nothing ran); and a SQLite lock whose
file name would be too long. Real PostgreSQL, MariaDB, SQLite and entrykit processes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from entrykit_process import clean_env, run_entrykit
from postgres_fixtures import PostgresServer
from test_once import start

from entrykit.migrations.locks import LOCK_KEY, lock_key, sqlite_lock_suffix


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "secrets").mkdir()
    return clean_env(tmp_path / "secrets", ENTRYKIT_WAIT="0")  # the lock connects first


def entrykit_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def assert_one_line_naming(stderr: str, lock: str, *secrets: str) -> str:
    """The failure is one ERROR line naming the lock, with no continuation and no secret."""
    errors = [line for line in entrykit_lines(stderr) if " ERROR " in line]
    assert len(errors) == 1, stderr
    assert lock in errors[0], stderr
    assert "\tIs the server running" not in stderr and "Traceback" not in stderr, stderr
    assert not any(line.startswith((" ", "\t")) for line in entrykit_lines(stderr)), stderr
    for secret in secrets:
        assert secret not in stderr
    return errors[0]


# -- the lock's connection cannot be opened -----------------------------------------------------


def test_once_with_no_server_is_exit_20_naming_the_lock(
    env: dict[str, str], tmp_path: Path
) -> None:
    env["DATABASE_URL"] = "postgresql://u:s3cret-pw@127.0.0.1:1/db"
    result = run_entrykit(["once", "j", "--", "touch", str(tmp_path / "ran")], env)
    assert result.returncode == 20, result.stderr
    line = assert_one_line_naming(result.stderr, "the lock j: cannot connect to", "s3cret-pw")
    assert "Connection refused" in line
    assert not (tmp_path / "ran").exists()


def test_once_with_a_wrong_password_is_exit_21_as_with_the_wait(
    env: dict[str, str], postgres_server: PostgresServer, tmp_path: Path
) -> None:
    env["DATABASE_URL"] = postgres_server.url(password="wrong-pw-x")
    result = run_entrykit(["once", "j", "--", "touch", str(tmp_path / "ran")], env)
    assert result.returncode == 21, result.stderr
    line = assert_one_line_naming(result.stderr, "the lock j: ", "wrong-pw-x")
    assert "refused the login: password authentication failed" in line
    assert not (tmp_path / "ran").exists()


def test_a_once_true_command_under_run_is_classified_too(
    env: dict[str, str], postgres_server: PostgresServer, tmp_path: Path
) -> None:
    (tmp_path / "entrykit.toml").write_text(
        '[[commands]]\nname = "seed"\nrun = "touch seeded"\nonce = true\n'
    )
    env["DATABASE_URL"] = postgres_server.url(password="wrong-pw-y")
    result = run_entrykit(["run", "--", "touch", "app"], env, cwd=tmp_path)
    assert result.returncode == 21, result.stderr
    assert_one_line_naming(result.stderr, "the lock seed: ", "wrong-pw-y")
    assert not (tmp_path / "seeded").exists() and not (tmp_path / "app").exists()


def test_mysql_lock_connection_refused_20_and_denied_21(
    env: dict[str, str], mariadb_server: Any, tmp_path: Path
) -> None:
    env["DATABASE_URL"] = mariadb_server.url(host="127.0.0.1").replace(
        f":{mariadb_server.port}/", ":1/"
    )
    refused = run_entrykit(["once", "j", "--", "true"], env)
    assert refused.returncode == 20, refused.stderr
    line = assert_one_line_naming(
        refused.stderr, "the lock j: cannot connect", mariadb_server.password
    )
    assert "(2003)" in line
    env["DATABASE_URL"] = mariadb_server.url(password="wrong-pw-z")
    denied = run_entrykit(["once", "j", "--", "touch", str(tmp_path / "ran")], env)
    assert denied.returncode == 21, denied.stderr
    line = assert_one_line_naming(denied.stderr, "the lock j: ", "wrong-pw-z")
    assert "refused the login: (1045)" in line
    assert not (tmp_path / "ran").exists()


# -- the session of a waiting replica is ended ----------------------------------------------------


def _terminate_when_waiting(server: PostgresServer, dbname: str, application: str) -> None:
    """End the backend of ``application`` once it has polled for a while (it waits)."""
    deadline = time.monotonic() + 30
    while True:
        rows = server.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name LIKE %s",
            (dbname, application + "%"),
        )
        if rows:
            break
        assert time.monotonic() < deadline, f"no session {application} showed"
        time.sleep(0.05)
    time.sleep(0.5)  # a few polls: it is waiting for the lock, not starting
    server.execute("SELECT pg_terminate_backend(%s)", (rows[0][0],))


def test_once_whose_waiting_session_is_ended_is_exit_31_and_runs_nothing(
    env: dict[str, str], postgres_server: PostgresServer, postgres_database: str, tmp_path: Path
) -> None:
    dbname = postgres_database.rsplit("/", 1)[1]
    env |= {"DATABASE_URL": postgres_database, "ENTRYKIT_MIGRATE_LOCK_TIMEOUT": "60"}
    with postgres_server.connect(dbname) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (lock_key("j"),))
        waiter = start(["once", "j", "--", "touch", str(tmp_path / "ran")], env)
        _terminate_when_waiting(postgres_server, dbname, "entrykit once j")
        _, stderr = waiter.communicate(timeout=60)
    assert waiter.returncode == 31, stderr
    line = assert_one_line_naming(stderr, "lost the session of the lock j while waiting for it")
    assert "terminating connection due to administrator command" in line
    assert "nothing ran" in line
    assert not (tmp_path / "ran").exists()


def test_a_migrate_command_whose_waiting_session_is_ended_is_exit_31(
    env: dict[str, str], postgres_server: PostgresServer, postgres_database: str, tmp_path: Path
) -> None:
    dbname = postgres_database.rsplit("/", 1)[1]
    env |= {
        "DATABASE_URL": postgres_database,
        "ENTRYKIT_MIGRATE_LOCK_TIMEOUT": "60",
        "ENTRYKIT_MIGRATE_COMMAND": f"touch {tmp_path / 'migrated'}",
    }
    with postgres_server.connect(dbname) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        waiter = start(["migrate"], env)
        _terminate_when_waiting(postgres_server, dbname, "entrykit migrate")
        _, stderr = waiter.communicate(timeout=60)
    assert waiter.returncode == 31, stderr
    assert_one_line_naming(stderr, "lost the session of the migration lock while waiting for it")
    assert not (tmp_path / "migrated").exists()


# -- SQLite: the lock file's name --------------------------------------------------------------


def test_a_long_lock_name_beside_a_long_database_name_is_hashed(
    env: dict[str, str], tmp_path: Path
) -> None:
    database = tmp_path / ("d" * 200 + ".db")
    name = "n" * 120
    env["DATABASE_URL"] = f"sqlite:///{database}"
    result = run_entrykit(["once", name, "--", "sh", "-c", "echo ran"], env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ran\n"
    suffix = sqlite_lock_suffix(database.name, name)
    assert suffix != f".{name}.once-lock" and len(database.name + suffix) <= 255
    assert (tmp_path / (database.name + suffix)).exists()
    short = sqlite_lock_suffix("app.db", name)  # short enough: the name as it is
    assert short == f".{name}.once-lock"


def test_a_lock_file_that_cannot_be_made_is_exit_10_naming_the_lock(
    env: dict[str, str], tmp_path: Path
) -> None:
    database = tmp_path / ("d" * 250)  # even the hashed name is too long beside it
    env["DATABASE_URL"] = f"sqlite:///{database}"
    result = run_entrykit(["once", "job", "--", "true"], env)
    assert result.returncode == 10, result.stderr
    assert_one_line_naming(result.stderr, "the lock job: cannot open its lock file")
    assert "File name too long" in result.stderr
