"""A held replica lock is kept alive, and a lost one is said at once (lock_keepalive.py,
lock_hold.py): replicas take turns under PostgreSQL's idle_session_timeout and MariaDB's
wait_timeout; a backend terminated while the lock is held is one ERROR line at once and exit 31
at the end (a real PostgreSQL, a real MariaDB, real entrykit processes)."""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from entrykit_process import clean_env, run_entrykit
from postgres_fixtures import PostgresServer
from test_once import start  # the same replicas as test_once's

from entrykit.database import open_mysql_connection, parse_database_url
from entrykit.migrations.lock_hold import LockLost
from entrykit.migrations.lock_keepalive import KEEP_ALIVE_MOST, STOP_WAIT_MOST, keep_alive_every
from entrykit.migrations.locks import (
    LOCK_KEY,
    migration_lock,
    mysql_lock,
    mysql_lock_name,
    named_lock,
)
from entrykit.settings import Settings

IDLE_1S = "options=-c%20idle_session_timeout%3D1000"
LOST = "lost the lock job while holding it"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "secrets").mkdir()
    return clean_env(tmp_path / "secrets")


def wait_for_file(path: Path, proc: Any, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.05)


def terminate_lock_backend(server: PostgresServer, dbname: str, application: str) -> int:
    """pg_terminate_backend of the session holding an advisory lock; how many it ended."""
    rows = server.execute(
        "SELECT pg_terminate_backend(a.pid) FROM pg_stat_activity a JOIN pg_locks l "
        "ON l.pid = a.pid WHERE l.locktype = 'advisory' AND l.granted "
        "AND a.datname = %s AND a.application_name LIKE %s",
        (dbname, application + "%"),
    )
    return len(rows)


def test_keep_alive_runs_a_third_of_the_idle_limit_apart() -> None:
    assert keep_alive_every(1.0) == pytest.approx(1 / 3)
    assert keep_alive_every(None) == KEEP_ALIVE_MOST == keep_alive_every(0)
    assert keep_alive_every(8 * 3600) == KEEP_ALIVE_MOST  # MySQL's default wait_timeout


# -- PostgreSQL, real processes ------------------------------------------------------------------


def test_under_idle_session_timeout_replicas_take_turns(
    env: dict[str, str], postgres_server: PostgresServer, postgres_database: str, tmp_path: Path
) -> None:
    """idle_session_timeout=1 s, a 4 s command: the second replica waits for the first,
    which keeps its lock and exits 0 without a word about a lost lock."""
    env["DATABASE_URL"] = f"{postgres_database}?{IDLE_1S}"
    started, order = tmp_path / "started", tmp_path / "order"
    first = start(
        ["once", "job", "--", "sh", "-c", f"touch {started}; sleep 4; echo first >> {order}"],
        env,
    )
    wait_for_file(started, first)
    time.sleep(2.5)  # past the idle limit: without the keep-alive the lock is gone by now
    second = run_entrykit(["once", "job", "--", "sh", "-c", f"echo second >> {order}"], env)
    _, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    assert second.returncode == 0, second.stderr
    assert order.read_text().split() == ["first", "second"]
    assert "waiting for the lock job" in second.stderr
    assert "lost" not in err and "lost" not in second.stderr


def test_a_terminated_lock_backend_is_an_error_at_once_and_exit_31(
    env: dict[str, str], postgres_server: PostgresServer, postgres_database: str, tmp_path: Path
) -> None:
    """pg_terminate_backend of the lock's session while the command runs: one ERROR line at
    once (before the command ends) naming the lock; the command runs to its end; exit 31."""
    env["DATABASE_URL"] = postgres_database
    dbname = postgres_database.rsplit("/", 1)[1]
    started, done = tmp_path / "started", tmp_path / "done"
    proc = start(
        ["once", "job", "--", "sh", "-c", f"touch {started}; sleep 3; touch {done}"],
        env,
    )
    wait_for_file(started, proc)
    assert terminate_lock_backend(postgres_server, dbname, "entrykit once job") == 1
    # the lock is free now: another replica would run the job at the same time
    other = run_entrykit(["once", "job", "--", "true"], env)
    assert other.returncode == 0, other.stderr
    assert not done.exists()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 31, err
    assert done.exists()  # the command's own run was not cut short
    lines = err.splitlines()
    lost = [i for i, line in enumerate(lines) if "ERROR" in line and LOST in line]
    ended = [i for i, line in enumerate(lines) if "job: exited with status 0" in line]
    assert lost and ended and lost[0] < ended[0], err  # said at once, not at the end
    assert "another replica may take it now" in lines[lost[0]]
    assert "terminating connection due to administrator command" in lines[lost[0]]
    assert "(exit 31)" in lines[-1]
    assert postgres_server.password not in err


def test_a_once_true_start_up_command_that_lost_its_lock_is_exit_31(
    env: dict[str, str], postgres_server: PostgresServer, postgres_database: str, tmp_path: Path
) -> None:
    (tmp_path / "entrykit.toml").write_text(
        '[[commands]]\nname = "job"\nrun = "sh -c \'touch started; sleep 3\'"\nonce = true\n'
    )
    env["DATABASE_URL"] = postgres_database
    dbname = postgres_database.rsplit("/", 1)[1]
    proc = start(["run", "--", "sh", "-c", "touch execed"], env, cwd=tmp_path)
    wait_for_file(tmp_path / "started", proc)
    assert terminate_lock_backend(postgres_server, dbname, "entrykit once job") == 1
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 31, err
    assert f"ERROR prestart {LOST}" in err
    assert not (tmp_path / "execed").exists()  # the replica does not start on a lost lock


def test_migrate_commands_of_replicas_take_turns_under_idle_session_timeout(
    env: dict[str, str], postgres_database: str, tmp_path: Path
) -> None:
    """A 3 s migrate command under idle_session_timeout=1 s: the second replica's runs after."""
    order = tmp_path / "order"
    env |= {
        "DATABASE_URL": f"{postgres_database}?{IDLE_1S}",
        "ENTRYKIT_MIGRATE_COMMAND": (
            f"sh -c 'touch {tmp_path}/started; echo start >> {order}; sleep 3; echo end >> {order}'"
        ),
    }
    first = start(["migrate"], env)
    wait_for_file(tmp_path / "started", first)
    time.sleep(1.5)  # past the idle limit
    second = run_entrykit(["migrate"], env)
    _, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    assert second.returncode == 0, second.stderr
    assert order.read_text().split() == ["start", "end", "start", "end"]


# -- the migration lock in-process --------------------------------------------------------------


def settings_for(url: str, tmp_path: Path) -> Settings:
    return Settings.load({"database_url": url, "migrate_lock_timeout": 5}, {}, tmp_path)


def free_elsewhere(server: PostgresServer, dbname: str, key: int) -> bool:
    """Whether another session could take the advisory lock ``key`` now (letting it go)."""
    with server.connect(dbname) as conn:
        got = bool(conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0])
        if got:
            conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
        return got


def test_the_migration_lock_outlives_idle_session_timeout(
    postgres_server: PostgresServer, postgres_database: str, tmp_path: Path
) -> None:
    """A long migration under idle_session_timeout=1 s keeps the migration lock throughout."""
    dbname = postgres_database.rsplit("/", 1)[1]
    url = f"{postgres_database}?{IDLE_1S}"
    with migration_lock(parse_database_url(url), settings_for(url, tmp_path), None) as waited:
        assert waited == 0.0
        for _ in range(6):
            time.sleep(0.5)
            assert not free_elsewhere(postgres_server, dbname, LOCK_KEY)
    assert free_elsewhere(postgres_server, dbname, LOCK_KEY)


@pytest.fixture
def migrate_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.INFO, logger="entrykit"):
        yield caplog


def error_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]


def test_a_lost_migration_lock_is_lock_lost_after_the_body(
    postgres_server: PostgresServer,
    postgres_database: str,
    tmp_path: Path,
    migrate_log: pytest.LogCaptureFixture,
) -> None:
    dbname = postgres_database.rsplit("/", 1)[1]
    settings = settings_for(postgres_database, tmp_path)
    target = parse_database_url(postgres_database)
    lock = migration_lock(target, settings, None)
    lost = pytest.raises(LockLost, match="lost the migration lock while holding it")
    with lost as caught, lock:
        assert terminate_lock_backend(postgres_server, dbname, "entrykit migrate") == 1
        deadline = time.monotonic() + 10
        while not error_lines(migrate_log):  # logged by the keep-alive, while held
            assert time.monotonic() < deadline, "no ERROR line while the lock was held"
            time.sleep(0.05)
    assert caught.value.exit_code == 31
    assert len(error_lines(migrate_log)) == 1
    assert "another replica may take it now" in error_lines(migrate_log)[0]
    assert free_elsewhere(postgres_server, dbname, LOCK_KEY)


def test_the_body_s_own_error_stands_over_a_lost_lock(
    postgres_server: PostgresServer,
    postgres_database: str,
    tmp_path: Path,
    migrate_log: pytest.LogCaptureFixture,
) -> None:
    dbname = postgres_database.rsplit("/", 1)[1]
    settings = settings_for(postgres_database, tmp_path)
    failed = pytest.raises(RuntimeError, match="the migration failed")
    with failed, named_lock(settings, "job", step="once"):
        assert terminate_lock_backend(postgres_server, dbname, "entrykit once job") == 1
        time.sleep(0.5)
        raise RuntimeError("the migration failed")
    assert any(LOST in line for line in error_lines(migrate_log))


# -- MariaDB: wait_timeout -----------------------------------------------------------------------


def _short_wait_timeout(server: Any) -> Callable[[Any], Any]:
    def connect(address: Any) -> Any:
        session = open_mysql_connection(address)
        with session.cursor() as cursor:
            cursor.execute("SET SESSION wait_timeout = 1")
        return session

    return connect


def _got_elsewhere(server: Any, name: str) -> bool:
    import pymysql

    conn = pymysql.connect(
        host=server.host,
        port=server.port,
        user=server.user,
        password=server.password,
        database=server.database,
        autocommit=True,
    )
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT GET_LOCK(%s, 0)", (name,))
            got = cursor.fetchone()[0] == 1
            if got:
                cursor.execute("SELECT RELEASE_LOCK(%s)", (name,))
            return bool(got)
    finally:
        conn.close()


def test_mysql_lock_outlives_wait_timeout(mariadb_server: Any, tmp_path: Path) -> None:
    """wait_timeout=1 s on the lock's session: held 3 s, the lock stays ours."""
    target = parse_database_url(mariadb_server.url())
    assert target.mysql is not None
    name = mysql_lock_name("once keepalive-test", mariadb_server.database)
    lock = mysql_lock(target.mysql, name, timeout=5, connect=_short_wait_timeout(mariadb_server))
    with lock:
        for _ in range(6):
            time.sleep(0.5)
            assert not _got_elsewhere(mariadb_server, name)
    assert _got_elsewhere(mariadb_server, name)


def test_mysql_lock_killed_is_lock_lost(
    mariadb_server: Any, tmp_path: Path, migrate_log: pytest.LogCaptureFixture
) -> None:
    target = parse_database_url(mariadb_server.url())
    assert target.mysql is not None
    name = mysql_lock_name("once killed-test", mariadb_server.database)
    ids: list[int] = []

    def connect(address: Any) -> Any:
        session = open_mysql_connection(address)
        with session.cursor() as cursor:
            cursor.execute("SELECT CONNECTION_ID()")
            ids.append(int(cursor.fetchone()[0]))
        return session

    lock = mysql_lock(target.mysql, name, timeout=5, label="the lock killed", connect=connect)
    with pytest.raises(LockLost) as caught, lock:
        admin = open_mysql_connection(target.mysql)  # another session kills it, as one would
        with admin.cursor() as cursor:
            cursor.execute(f"KILL CONNECTION {ids[0]}")
        admin.close()
        assert _got_elsewhere(mariadb_server, name)  # free for another replica now
    assert caught.value.exit_code == 31
    assert any("lost the lock killed while holding it" in line for line in error_lines(migrate_log))


@pytest.mark.slow
def test_a_keep_alive_query_that_never_answers_is_a_lost_lock_not_a_hang(
    postgres_server: PostgresServer, postgres_database: str, tmp_path: Path
) -> None:
    """The lock's backend stopped (a network partition, as far as the client can tell): the
    hold ends within STOP_WAIT_MOST of the body with LockLost, not never."""
    dbname = postgres_database.rsplit("/", 1)[1]
    url = f"{postgres_database}?{IDLE_1S}"  # a keep-alive query every 1/3 s
    settings = settings_for(url, tmp_path)
    pids: list[int] = []
    try:
        with pytest.raises(LockLost, match="no answer"), named_lock(settings, "hung", step="once"):
            pids += [
                pid
                for (pid,) in postgres_server.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = %s "
                    "AND application_name LIKE 'entrykit once hung%%'",
                    (dbname,),
                )
            ]
            assert len(pids) == 1
            os.kill(pids[0], signal.SIGSTOP)
            time.sleep(1)  # the next keep-alive query is sent and waits for its answer
            started = time.monotonic()
        assert time.monotonic() - started < STOP_WAIT_MOST + 5
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
            postgres_server.execute("SELECT pg_terminate_backend(%s)", (pid,))
