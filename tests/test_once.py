"""Run-once jobs across replicas (docs/commands.md): `entrykit once NAME -- CMD` and
`once = true` start-up commands, under named locks on a real PostgreSQL, a SQLite file and a
real MariaDB; exit statuses passed through; 10, 31, 50, 127 and 143 where docs/reference.md says."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from entrykit_process import ENTRYKIT, clean_env, run_entrykit
from postgres_fixtures import PostgresServer
from test_launch import binfmt_misc_formats

from entrykit.database import parse_database_url
from entrykit.errors import MigrationLockTimeout
from entrykit.migrations.locks import (
    LOCK_KEY,
    lock_key,
    migration_lock,
    mysql_lock_name,
    named_lock,
)
from entrykit.settings import Settings

# Check, think, insert: two replicas running it at once both insert (it races without a lock).
SEED_POSTGRES = """
import os, sys, time, psycopg
with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
    conn.execute("CREATE TABLE IF NOT EXISTS seeded (pid int)")
    if conn.execute("SELECT count(*) FROM seeded").fetchone()[0]:
        print("already seeded")
        sys.exit(0)
    time.sleep(0.3)
    conn.execute("INSERT INTO seeded VALUES (%s)", (os.getpid(),))
    print("seeded")
"""

SEED_SQLITE = """
import os, sys, time, sqlite3
conn = sqlite3.connect(os.environ["DATABASE_URL"].removeprefix("sqlite:///"), timeout=30)
conn.execute("CREATE TABLE IF NOT EXISTS seeded (pid int)")
conn.commit()
if conn.execute("SELECT count(*) FROM seeded").fetchone()[0]:
    print("already seeded")
    sys.exit(0)
time.sleep(0.3)
conn.execute("INSERT INTO seeded VALUES (?)", (os.getpid(),))
conn.commit()
print("seeded")
"""


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "secrets").mkdir()
    return clean_env(tmp_path / "secrets")


def start(
    args: Sequence[str], env: dict[str, str], cwd: Path | None = None
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*ENTRYKIT, *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(procs: Sequence[subprocess.Popen[str]]) -> list[tuple[int, str, str]]:
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        results.append((proc.returncode, out, err))
    return results


# -- entrykit once: one at a time --------------------------------------------------------------


def test_four_replicas_seed_once_on_postgresql(
    env: dict[str, str], postgres_server: PostgresServer, postgres_database: str
) -> None:
    env["DATABASE_URL"] = postgres_database
    procs = [
        start(["once", "seed", "--", sys.executable, "-c", SEED_POSTGRES], env) for _ in range(4)
    ]
    results = finish(procs)
    assert [code for code, _, _ in results] == [0] * 4, results
    assert sorted(out for _, out, _ in results) == ["already seeded\n"] * 3 + ["seeded\n"]
    dbname = postgres_database.rsplit("/", 1)[1]
    assert postgres_server.execute("SELECT count(*) FROM seeded", dbname=dbname) == [(1,)]
    waited = [err for _, _, err in results if "waiting for the lock seed" in err]
    assert waited, "no replica waited: the test did not overlap them"
    assert all(postgres_server.password not in err for _, _, err in results)


def test_four_replicas_seed_once_on_sqlite(env: dict[str, str], tmp_path: Path) -> None:
    env["DATABASE_URL"] = f"sqlite:///{tmp_path}/app.db"
    procs = [
        start(["once", "seed", "--", sys.executable, "-c", SEED_SQLITE], env) for _ in range(4)
    ]
    results = finish(procs)
    assert [code for code, _, _ in results] == [0] * 4, results
    assert sorted(out for _, out, _ in results) == ["already seeded\n"] * 3 + ["seeded\n"]
    assert (tmp_path / "app.db.seed.once-lock").exists()  # the lock file beside the database


def test_the_lock_is_named_never_the_migration_lock(
    env: dict[str, str], postgres_server: PostgresServer, postgres_database: str
) -> None:
    """The migration lock held elsewhere does not block `once seed`; the lock `seed` held
    elsewhere does, until ENTRYKIT_MIGRATE_LOCK_TIMEOUT: exit 31 naming the holder."""
    dbname = postgres_database.rsplit("/", 1)[1]
    env |= {"DATABASE_URL": postgres_database, "ENTRYKIT_MIGRATE_LOCK_TIMEOUT": "1"}
    assert lock_key("seed") != LOCK_KEY and lock_key("seed") != lock_key("other")
    with postgres_server.connect(dbname, application_name="the seed job") as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        free = run_entrykit(["once", "seed", "--", "true"], env)
        assert free.returncode == 0, free.stderr
        holder.execute("SELECT pg_advisory_lock(%s)", (lock_key("seed"),))
        started = time.monotonic()
        blocked = run_entrykit(["once", "seed", "--", "touch", "ran"], env)
        assert blocked.returncode == 31, blocked.stderr
        assert time.monotonic() - started < 10
        assert "the seed job" in blocked.stderr
        other = run_entrykit(["once", "other", "--", "true"], env)  # another name: free
        assert other.returncode == 0, other.stderr


def test_output_passes_through_unchanged_and_the_status_is_the_exit(
    env: dict[str, str], tmp_path: Path
) -> None:
    env["DATABASE_URL"] = f"sqlite:///{tmp_path}/app.db"
    program = (
        "import sys; sys.stdout.buffer.write(bytes(range(256)) + b'no newline');"
        "sys.stderr.write('a warning of its own\\n'); sys.exit(7)"
    )
    result = subprocess.run(
        [*ENTRYKIT, "once", "dump", "--", sys.executable, "-c", program],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 7
    assert result.stdout == bytes(range(256)) + b"no newline"
    assert b"\na warning of its own\n" in b"\n" + result.stderr  # a line of its own, as printed
    assert b"once " in result.stderr  # entrykit's own lines are on stderr


def test_killed_by_a_signal_is_128_plus_n(env: dict[str, str], tmp_path: Path) -> None:
    env["DATABASE_URL"] = f"sqlite:///{tmp_path}/app.db"
    result = run_entrykit(["once", "job", "--", "sh", "-c", "kill -KILL $$"], env)
    assert result.returncode == 137, result.stderr


def test_timeout_is_exit_50(env: dict[str, str], tmp_path: Path) -> None:
    env["DATABASE_URL"] = f"sqlite:///{tmp_path}/app.db"
    started = time.monotonic()
    result = run_entrykit(["once", "job", "--timeout", "0.5", "--", "sleep", "30"], env)
    assert result.returncode == 50, result.stderr
    assert time.monotonic() - started < 10
    assert "timed out after 0.5 s" in result.stderr


@pytest.mark.parametrize(
    ("args", "extra", "code", "message"),
    [
        (["once", "job", "--", "true"], {}, 10, "needs a database"),
        (["once", "bad/name", "--", "true"], {"DATABASE_URL": "sqlite:///x.db"}, 10, "lock name"),
        (
            ["once", "job", "--", "no-such-program-xyz"],
            {"DATABASE_URL": "sqlite:///x.db"},
            127,
            "not found",
        ),
        (["once", "job"], {}, 2, "Missing argument"),
        (["once", "job", "--timeout", "0", "--", "true"], {}, 2, "--timeout"),
    ],
)
def test_once_errors(
    env: dict[str, str],
    tmp_path: Path,
    args: list[str],
    extra: dict[str, str],
    code: int,
    message: str,
) -> None:
    result = run_entrykit(args, {**env, **extra}, cwd=tmp_path)
    assert result.returncode == code, result.stderr
    assert message in result.stderr


def test_sigterm_is_passed_to_the_command_and_exit_143(env: dict[str, str], tmp_path: Path) -> None:
    env["DATABASE_URL"] = f"sqlite:///{tmp_path}/app.db"
    marker = tmp_path / "started"
    script = f"trap 'echo got TERM; exit 0' TERM; touch {marker}; sleep 300 & wait"
    proc = start(["once", "job", "--", "sh", "-c", script], env)
    deadline = time.monotonic() + 20
    while not marker.exists():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    assert out == "got TERM\n"


# -- once = true start-up commands --------------------------------------------------------------


def test_once_true_commands_of_replicas_run_one_at_a_time(
    env: dict[str, str], tmp_path: Path, postgres_server: PostgresServer, postgres_database: str
) -> None:
    (tmp_path / "seed.py").write_text(SEED_POSTGRES)
    (tmp_path / "entrykit.toml").write_text(
        f'[[commands]]\nname = "initial-data"\nrun = ["{sys.executable}", "seed.py"]\nonce = true\n'
    )
    env["DATABASE_URL"] = postgres_database
    procs = [start(["run", "--", "true"], env, cwd=tmp_path) for _ in range(3)]
    results = finish(procs)
    assert [code for code, _, _ in results] == [0] * 3, results
    dbname = postgres_database.rsplit("/", 1)[1]
    assert postgres_server.execute("SELECT count(*) FROM seeded", dbname=dbname) == [(1,)]
    lines = [err for _, _, err in results if "initial-data | seeded" in err]
    assert len(lines) == 1


def test_once_true_without_a_database_is_exit_10_before_any_step(
    env: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "entrykit.toml").write_text(
        '[[commands]]\nname = "seed"\nrun = "touch seeded"\nonce = true\n'
    )
    env["ENTRYKIT_WAIT_TCP"] = "127.0.0.1:9"  # would fail after a wait, were it reached
    result = run_entrykit(["run", "--", "true"], env, cwd=tmp_path)
    assert result.returncode == 10, result.stderr
    assert "seed" in result.stderr and "needs a database" in result.stderr
    assert "wait     start" not in result.stderr
    assert not (tmp_path / "seeded").exists()


# -- the locks in-process: SQLite and MariaDB ----------------------------------------------------


def settings_for(url: str, tmp_path: Path, lock_timeout: float = 1.0) -> Settings:
    return Settings.load({"database_url": url, "migrate_lock_timeout": lock_timeout}, {}, tmp_path)


def test_named_sqlite_locks_exclude_each_other_but_not_other_names(tmp_path: Path) -> None:
    settings = settings_for(f"sqlite:///{tmp_path}/app.db", tmp_path, lock_timeout=0.3)
    with named_lock(settings, "seed"):
        with (
            pytest.raises(MigrationLockTimeout, match="the lock seed"),
            named_lock(settings, "seed"),
        ):
            pass  # flock is per open file: a second open in this process conflicts too
        with named_lock(settings, "other") as waited:
            assert waited < 0.3
    with named_lock(settings, "seed") as waited:
        assert waited < 0.3


def test_in_memory_sqlite_has_no_named_lock(tmp_path: Path) -> None:
    from entrykit.errors import ConfigError

    with (
        pytest.raises(ConfigError, match="in-memory"),
        named_lock(settings_for("sqlite:///:memory:", tmp_path), "seed"),
    ):
        pass


def _mysql_connect(server: Any) -> Any:
    import pymysql

    return pymysql.connect(
        host=server.host,
        port=server.port,
        user=server.user,
        password=server.password,
        database=server.database,
        autocommit=True,
    )


def test_mysql_get_lock_for_migrations_and_named_locks(mariadb_server: Any, tmp_path: Path) -> None:
    """GET_LOCK on a dedicated connection: held elsewhere, the migration lock and a named lock
    time out (exit 31) naming the holder's connection; released, they are taken at once; the
    two names are different locks."""
    settings = settings_for(mariadb_server.url(), tmp_path, lock_timeout=0.5)
    target = parse_database_url(mariadb_server.url())
    migrate_name = mysql_lock_name("migrate", mariadb_server.database)
    seed_name = mysql_lock_name("once seed", mariadb_server.database)
    assert migrate_name != seed_name and len(mysql_lock_name("x", "d" * 100)) <= 64
    holder = _mysql_connect(mariadb_server)
    try:
        with holder.cursor() as cursor:
            cursor.execute("SELECT GET_LOCK(%s, 0), CONNECTION_ID()", (migrate_name,))
            got, connection_id = cursor.fetchone()
        assert got == 1
        lock = migration_lock(target, settings, None)
        expected = f"connection {connection_id}"
        with pytest.raises(MigrationLockTimeout, match=expected) as caught, lock:
            pass
        assert caught.value.exit_code == 31
        with named_lock(settings, "seed") as waited:  # another name: free
            assert waited < 0.5
    finally:
        holder.close()  # closing the session releases its locks
    with migration_lock(target, settings, None) as waited:
        assert waited < 0.5


def test_mysql_migration_lock_serialises_threads(mariadb_server: Any, tmp_path: Path) -> None:
    settings = settings_for(mariadb_server.url(), tmp_path, lock_timeout=30)
    target = parse_database_url(mariadb_server.url())
    inside: list[int] = []
    overlaps: list[int] = []
    lock = threading.Lock()

    def replica() -> None:
        with migration_lock(target, settings, None):
            with lock:
                inside.append(1)
                if len(inside) > 1:
                    overlaps.append(len(inside))
            time.sleep(0.2)
            with lock:
                inside.pop()

    threads = [threading.Thread(target=replica) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert overlaps == []


def test_entrykit_once_on_mariadb(env: dict[str, str], mariadb_server: Any) -> None:
    env |= {"DATABASE_URL": mariadb_server.url(), "ENTRYKIT_MIGRATE_LOCK_TIMEOUT": "1"}
    holder = _mysql_connect(mariadb_server)
    try:
        with holder.cursor() as cursor:
            cursor.execute(
                "SELECT GET_LOCK(%s, 0)", (mysql_lock_name("once seed", mariadb_server.database),)
            )
        blocked = run_entrykit(["once", "seed", "--", "true"], env)
        assert blocked.returncode == 31, blocked.stderr
        assert mariadb_server.password not in blocked.stderr
    finally:
        holder.close()
    free = run_entrykit(["once", "seed", "--", "sh", "-c", "echo ran"], env)
    assert free.returncode == 0, free.stderr
    assert free.stdout == "ran\n"


def test_a_waiting_replica_is_told_which_replica_holds_the_lock(
    env: dict[str, str], postgres_database: str, tmp_path: Path
) -> None:
    env |= {"DATABASE_URL": postgres_database, "ENTRYKIT_MIGRATE_LOCK_TIMEOUT": "1"}
    marker = tmp_path / "holding"
    holder = start(["once", "seed", "--", "sh", "-c", f"touch {marker}; sleep 5"], env)
    try:
        deadline = time.monotonic() + 30
        while not marker.exists():
            assert time.monotonic() < deadline and holder.poll() is None
            time.sleep(0.05)
        waiter = run_entrykit(["once", "seed", "--", "true"], env)
    finally:
        holder.kill()
        holder.communicate()
    assert waiter.returncode == 31, waiter.stderr
    assert f"entrykit once seed {os.uname().nodename} pid" in waiter.stderr


# -- commands that cannot start: as a shell says, before the lock -------------------------------


def _executable(path: Path, text: bytes) -> str:
    path.write_bytes(text)
    path.chmod(0o755)
    return str(path)


@pytest.mark.parametrize(
    ("text", "code", "message"),
    [
        (b"#!/nonexistent/interp\necho hi\n", 127, "bad interpreter /nonexistent/interp"),
        (b"echo hi\n", 126, "Exec format error"),
    ],
)
def test_a_script_that_cannot_start_is_126_or_127_before_the_lock(
    env: dict[str, str], tmp_path: Path, text: bytes, code: int, message: str
) -> None:
    """bash says 127 "required file not found" and 126 "Exec format error" for these; they
    were exit 50 after the lock. The lock is held here: taking it would wait 31 s."""
    if code == 126 and binfmt_misc_formats():
        pytest.skip("binfmt_misc formats are registered: another format may run the file")
    script = _executable(tmp_path / "x.sh", text)
    env |= {"DATABASE_URL": f"sqlite:///{tmp_path}/app.db", "ENTRYKIT_MIGRATE_LOCK_TIMEOUT": "30"}
    with named_lock(settings_for(env["DATABASE_URL"], tmp_path), "job"):
        started = time.monotonic()
        result = run_entrykit(["once", "job", "--", script], env)
    assert result.returncode == code, result.stderr
    assert message in result.stderr
    assert time.monotonic() - started < 20 and "waiting for the lock" not in result.stderr


@pytest.mark.parametrize(
    ("inner", "code"), [(b"#!/nonexistent/interp\n", 127), (b"no interpreter line\n", 126)]
)
def test_a_spawn_failure_under_the_lock_is_126_or_127(
    env: dict[str, str], tmp_path: Path, inner: bytes, code: int
) -> None:
    """An interpreter that is itself a script the kernel cannot run passes the check (its
    interpreter exists): the spawn fails with ENOENT or ENOEXEC, exit 127 or 126, not 50."""
    if code == 126 and binfmt_misc_formats():
        pytest.skip("binfmt_misc formats are registered: another format may run the file")
    interpreter = _executable(tmp_path / "inner", inner)
    script = _executable(tmp_path / "outer.sh", f"#!{interpreter}\n".encode())
    env["DATABASE_URL"] = f"sqlite:///{tmp_path}/app.db"
    result = run_entrykit(["once", "job", "--", script], env)
    assert result.returncode == code, result.stderr
    assert "command job" in result.stderr


# -- ENTRYKIT_USER: the job is the CMD, run as the user ------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="the switch needs root")
def test_once_runs_its_command_as_entrykit_user(env: dict[str, str], tmp_path: Path) -> None:
    import pwd

    nobody = pwd.getpwnam("nobody")
    env |= {"DATABASE_URL": f"sqlite:///{tmp_path}/app.db", "ENTRYKIT_USER": "nobody"}
    script = 'id -un; id -u; id -g; id -G; echo "$HOME $USER"'
    result = run_entrykit(["once", "job", "--", "sh", "-c", script], env)
    assert result.returncode == 0, result.stderr
    name, uid, gid, groups, home_user = result.stdout.splitlines()
    expected_groups = sorted({nobody.pw_gid, *os.getgrouplist("nobody", nobody.pw_gid)})
    assert (name, uid, gid) == ("nobody", str(nobody.pw_uid), str(nobody.pw_gid))
    assert sorted(map(int, groups.split())) == expected_groups
    assert home_user == f"{nobody.pw_dir} nobody"
    # entrykit took the lock as root: its file is root's
    assert (tmp_path / "app.db.job.once-lock").stat().st_uid == 0
    unknown = run_entrykit(["once", "job", "--", "true"], {**env, "ENTRYKIT_USER": "no-such-x"})
    assert unknown.returncode == 10, unknown.stderr
