"""MySQL/MariaDB as DATABASE_URL (docs/database.md): Alembic migrations with PyMySQL, the
replica lock by GET_LOCK, ``--check``, wait mode and a stop in the middle of a statement,
against a real MariaDB server (tests/servers.py).
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_migrate import (
    CREATE_RUNS,
    ENTRYKIT,
    ENV_PY,
    EXAMPLE_INI,
    _run_together,
    clean_env,
    entrykit,
    project,
    revision,
    settings_for,
)
from test_migrate_hardening import stop_mid_statement, wait_until

from entrykit.errors import DependencyNotReady, MigrationFailed
from entrykit.migrations.upgrade import MigrateOutcome, migrate, wait_for_head


@pytest.fixture
def mysql_database(mariadb_server: Any) -> Iterator[str]:
    """A fresh, empty database on the session's MariaDB; the value is its URL."""
    name = mariadb_server.create_database()
    yield mariadb_server.url(db=name)
    mariadb_server.execute(f"DROP DATABASE IF EXISTS `{name}`")


def tables(server: Any, url: str) -> set[str]:
    database = url.rsplit("/", 1)[1]
    return set(server.execute("SHOW TABLES", database=database).split())


def test_example_project_migrates_once_then_has_nothing_to_do(
    mariadb_server: Any, mysql_database: str
) -> None:
    settings = settings_for(mysql_database)
    assert migrate(settings, check=True).pending == ("0001", "0002", "0003", "0004")
    assert tables(mariadb_server, mysql_database) == set()
    outcome = migrate(settings)
    assert outcome.applied == ("0001", "0002", "0003", "0004")
    assert tables(mariadb_server, mysql_database) == {"notes", "jobs", "users", "alembic_version"}
    assert migrate(settings) == MigrateOutcome(current=("0004",), target=("0004",))
    assert migrate(settings, check=True).pending == ()


@pytest.mark.parametrize(
    "scheme", ["mysql", "mariadb", "mysql+pymysql", "mysql+mysqldb", "mysql+aiomysql"]
)
def test_every_mysql_scheme_migrates_with_pymysql(
    mariadb_server: Any, tmp_path: Path, scheme: str
) -> None:
    spy = tmp_path / "seen.txt"
    config = project(tmp_path / "p", {"a": revision("a", None, CREATE_RUNS)})
    (config.parent / "migrations" / "env.py").write_text(
        ENV_PY + f"\nopen({str(spy)!r}, 'w').write(config.get_main_option('sqlalchemy.url'))\n"
    )
    url = mariadb_server.url(db=mariadb_server.create_database(), scheme=scheme)
    assert migrate(settings_for(url, config)).applied == ("a",)
    assert spy.read_text().startswith("mysql+pymysql://")


@pytest.mark.slow
def test_cli_check_migrate_and_a_failing_revision(mariadb_server: Any, tmp_path: Path) -> None:
    url = mariadb_server.url(db=mariadb_server.create_database())
    env = {"DATABASE_URL": url, "ENTRYKIT_ALEMBIC_CONFIG": str(EXAMPLE_INI)}
    result = entrykit("migrate", "--check", env=env)
    assert result.returncode == 1, result.stderr
    assert "4 pending: 0001" in result.stderr
    assert entrykit("migrate", env=env).returncode == 0
    result = entrykit("migrate", "--check", env=env)
    assert result.returncode == 0, result.stderr
    assert "nothing to do" in result.stderr
    assert mariadb_server.password not in result.stderr

    config = project(
        tmp_path,
        {
            "a": revision("a", None, CREATE_RUNS),
            "b": revision("b", "a", 'op.execute("SELECT * FROM no_such_table")'),
        },
    )
    env = {
        "DATABASE_URL": mariadb_server.url(db=mariadb_server.create_database()),
        "ENTRYKIT_ALEMBIC_CONFIG": str(config),
    }
    result = entrykit("migrate", env=env)
    assert result.returncode == 30, result.stderr
    assert "migration b (revision b) failed, the database is at a (revision a)" in result.stderr
    assert "no_such_table" in result.stderr and "Traceback" not in result.stderr


def slow_mysql_project(root: Path) -> Path:
    return project(
        root,
        {
            "a": revision("a", None, CREATE_RUNS),
            "b": revision(
                "b",
                "a",
                'op.execute("SELECT SLEEP(1.5)")\n'
                'op.create_table("things", sa.Column("x", sa.Integer))\nrecord()',
            ),
            "c": revision(
                "c", "b", 'op.add_column("things", sa.Column("y", sa.Integer))\nrecord()'
            ),
        },
    )


@pytest.mark.slow
def test_four_replicas_at_once_each_revision_runs_once(
    mariadb_server: Any, mysql_database: str, tmp_path: Path
) -> None:
    config = slow_mysql_project(tmp_path)
    env = {"DATABASE_URL": mysql_database, "ENTRYKIT_ALEMBIC_CONFIG": str(config)}
    results = _run_together(4, env, "migrate")
    assert [code for code, _ in results] == [0] * 4, "\n".join(out for _, out in results)
    database = mysql_database.rsplit("/", 1)[1]
    runs = mariadb_server.execute(
        "SELECT revision, count(*) FROM runs GROUP BY revision ORDER BY 1", database=database
    )
    assert runs.split("\n")[:3] == ["a\t1", "b\t1", "c\t1"]
    output = "\n".join(out for _, out in results)
    assert output.count("applied a, b, c") == 1
    assert "waiting for the migration lock" in output  # they did overlap


@pytest.mark.slow
def test_wait_mode_waits_for_another_replica_then_times_out_on_a_fresh_database(
    mariadb_server: Any, mysql_database: str, tmp_path: Path
) -> None:
    env = {
        "DATABASE_URL": mysql_database,
        "ENTRYKIT_ALEMBIC_CONFIG": str(EXAMPLE_INI),
        "ENTRYKIT_MIGRATE": "wait",
        "ENTRYKIT_WAIT_TIMEOUT": "30",
    }
    log = tmp_path / "replica.log"
    with log.open("w") as stderr:  # Alembic's context is one per process: a real replica
        replica = subprocess.Popen(
            [*ENTRYKIT, "run", "--", "true"], env=clean_env(env), cwd="/", stderr=stderr
        )
    wait_until(lambda: "waiting for migrations to 0004" in log.read_text(), 30, "waiting")
    assert replica.poll() is None
    migrate(settings_for(mysql_database))
    assert replica.wait(timeout=10) == 0, log.read_text()

    fresh = mariadb_server.url(db=mariadb_server.create_database())
    with pytest.raises(DependencyNotReady, match="migration Job"):
        wait_for_head(settings_for(fresh, wait_timeout=1.0))


def sleeping_queries(server: Any) -> list[str]:
    rows = server.execute(
        "SELECT ID FROM information_schema.PROCESSLIST "
        "WHERE INFO LIKE '%SLEEP(60)%' AND ID <> CONNECTION_ID()"
    )
    return rows.split()


@pytest.mark.slow
def test_sigterm_kills_the_running_query_and_the_next_replica_migrates(
    mariadb_server: Any, mysql_database: str, tmp_path: Path
) -> None:
    body = (
        'if os.environ.get("SLOW_MIGRATION"):\n    op.execute("SELECT SLEEP(60)")\n'
        'op.create_table("things", sa.Column("x", sa.Integer))\nrecord()'
    )
    config = project(
        tmp_path, {"a": revision("a", None, CREATE_RUNS), "b": revision("b", "a", body)}
    )
    env = {"DATABASE_URL": mysql_database, "ENTRYKIT_ALEMBIC_CONFIG": str(config)}
    code, stderr = stop_mid_statement(env, lambda: sleeping_queries(mariadb_server), signal.SIGTERM)
    assert code == 143, stderr
    assert "cancelled the statement running on the server" in stderr
    assert wait_until(lambda: not sleeping_queries(mariadb_server), 5, "query ended") < 0.5
    started = time.monotonic()
    second = entrykit("migrate", env=env)
    assert second.returncode == 0, second.stderr
    assert time.monotonic() - started < 15
    assert "waiting for the migration lock" not in second.stderr
    assert "applied b" in second.stderr  # MySQL commits each DDL: revision a stayed


def test_env_py_migrating_another_mysql_database_fails(
    mariadb_server: Any, mysql_database: str, tmp_path: Path
) -> None:
    other = mariadb_server.url(db=mariadb_server.create_database(), scheme="mysql+pymysql")
    config = project(tmp_path, {"a": revision("a", None, CREATE_RUNS)})
    (config.parent / "migrations" / "env.py").write_text(
        "from alembic import context\nfrom sqlalchemy import create_engine\n"
        f"engine = create_engine({other!r})\n"
        "with engine.connect() as connection:\n"
        "    context.configure(connection=connection)\n"
        "    with context.begin_transaction():\n"
        "        context.run_migrations()\n"
    )
    with pytest.raises(MigrationFailed, match="the migration went to another database"):
        migrate(settings_for(mysql_database, config))
    assert tables(mariadb_server, mysql_database) == set()


def test_a_non_ascii_password_migrates(mariadb_server: Any, mysql_database: str) -> None:
    """Alembic's engine logs in the way the wait does (the password's UTF-8 bytes): PyMySQL
    given the URL would send latin-1, and the server would refuse 'pässwörd€'."""
    import hashlib

    password = "pässwörd€-1"
    name = mysql_database.rsplit("/", 1)[1]
    digest = hashlib.sha1(hashlib.sha1(password.encode()).digest()).hexdigest().upper()
    mariadb_server.execute(
        f"CREATE USER IF NOT EXISTS 'uni_migrate'@'%' IDENTIFIED BY PASSWORD '*{digest}';"
        f" GRANT ALL ON `{name}`.* TO 'uni_migrate'@'%'"
    )
    url = mariadb_server.url(db=name, user="uni_migrate", password=password)
    assert migrate(settings_for(url)).applied == ("0001", "0002", "0003", "0004")
    assert migrate(settings_for(url), check=True).pending == ()
