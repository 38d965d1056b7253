"""Alembic migrations (docs/database.md) against a real PostgreSQL, real SQLite files and real
processes racing each other.

The example project (examples/fastapi-app) is used as users would use it; projects that must
misbehave (a slow, a failing revision, two heads) are written into tmp dirs by ``project()``.
"""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from postgres_fixtures import PgBouncer, PostgresServer, free_port

from entrykit import logs
from entrykit.errors import ConfigError, MigrationFailed, MigrationLockTimeout, UnknownRevision
from entrykit.migrations.locks import LOCK_KEY, postgres_migration_lock
from entrykit.migrations.upgrade import MigrateOutcome, migrate, wait_for_head
from entrykit.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "fastapi-app"
EXAMPLE_INI = EXAMPLE / "alembic.ini"
ENTRYKIT = [sys.executable, "-m", "entrykit"]


# -- helpers ---------------------------------------------------------------------------------


def settings_for(url: str | None, config: Path = EXAMPLE_INI, **options: Any) -> Settings:
    return Settings.load(
        options={"database_url": url, "alembic_config": str(config), **options},
        environ={},
        cwd=config.parent,
    )


def entrykit(
    *args: str, env: dict[str, str], cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ENTRYKIT, *args],
        env=clean_env(env),
        cwd=cwd or "/",
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def clean_env(env: dict[str, str]) -> dict[str, str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ENTRYKIT_", "PG")) and k != "DATABASE_URL"
    }
    return {**base, **env}


def tables(server: PostgresServer, dbname: str) -> set[str]:
    rows = server.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public'", dbname=dbname
    )
    return {row[0] for row in rows}


def dbname_of(url: str) -> str:
    return url.rsplit("/", 1)[1].split("?")[0]


ENV_PY = (EXAMPLE / "migrations" / "env.py").read_text()


def revision(rev: str, down: str | tuple[str, ...] | None, body: str, doc: str = "") -> str:
    return (
        textwrap.dedent(
            f'''\
        """{doc or "revision " + rev}"""
        import os
        import time

        import sqlalchemy as sa
        from alembic import op

        revision = {rev!r}
        down_revision = {down!r}
        branch_labels = None
        depends_on = None


        def record():
            op.execute(
                sa.text("INSERT INTO runs (revision, pid) VALUES (:r, :p)").bindparams(
                    r=revision, p=os.getpid()
                )
            )


        def upgrade():
        '''
        )
        + textwrap.indent(textwrap.dedent(body), "    ")
        + "\n\ndef downgrade():\n    pass\n"
    )


CREATE_RUNS = """
op.create_table("runs", sa.Column("revision", sa.Text), sa.Column("pid", sa.Integer))
record()
"""


def project(
    root: Path, revisions: dict[str, str], *, pyproject: bool = False, relative: bool = True
) -> Path:
    """An Alembic project in ``root``; returns its config file."""
    (root / "migrations" / "versions").mkdir(parents=True)
    (root / "migrations" / "env.py").write_text(ENV_PY)
    (root / "migrations" / "script.py.mako").write_text(
        (EXAMPLE / "migrations" / "script.py.mako").read_text()
    )
    for name, text in revisions.items():
        (root / "migrations" / "versions" / f"{name}.py").write_text(text)
    location = "migrations" if relative else str(root / "migrations")
    if pyproject:
        path = root / "pyproject.toml"
        path.write_text(f'[tool.alembic]\nscript_location = "{location}"\n')
        return path
    ini = EXAMPLE_INI.read_text().replace("%(here)s/migrations", location)
    path = root / "alembic.ini"
    path.write_text(ini)
    return path


def slow_project(root: Path, seconds: float = 1.5, sqlite: bool = False) -> Path:
    sleep = f"time.sleep({seconds})" if sqlite else f'op.execute("SELECT pg_sleep({seconds})")'
    return project(
        root,
        {
            "a": revision("a", None, CREATE_RUNS),
            "b": revision(
                "b",
                "a",
                f'{sleep}\nop.create_table("things", sa.Column("x", sa.Integer))\nrecord()',
            ),
            "c": revision(
                "c", "b", 'op.add_column("things", sa.Column("y", sa.Integer))\nrecord()'
            ),
        },
    )


# -- the example project, in-process ---------------------------------------------------------


def test_example_project_migrates_once_then_has_nothing_to_do(
    postgres_server: PostgresServer, postgres_database: str
) -> None:
    settings = settings_for(postgres_database)
    outcome = migrate(settings)
    assert outcome.applied == ("0001", "0002", "0003", "0004")
    assert outcome.pending == ()
    name = dbname_of(postgres_database)
    assert {"notes", "jobs", "users", "alembic_version"} <= tables(postgres_server, name)
    again = migrate(settings)
    assert again == MigrateOutcome(current=("0004",), target=("0004",))
    assert migrate(settings, check=True).pending == ()


def test_check_lists_pending_and_changes_nothing(
    postgres_server: PostgresServer, postgres_database: str
) -> None:
    settings = settings_for(postgres_database)
    assert migrate(settings, check=True).pending == ("0001", "0002", "0003", "0004")
    assert tables(postgres_server, dbname_of(postgres_database)) == set()
    migrate(settings, revision="0001")
    assert migrate(settings, check=True).pending == ("0002", "0003", "0004")
    assert migrate(settings, check=True, revision="0002").pending == ("0002",)


def test_sql_needs_no_database() -> None:
    out = io.StringIO()
    # a port where nothing listens: --sql must not even try it
    settings = settings_for(f"postgresql://u:p@127.0.0.1:{free_port()}/app")
    started = time.monotonic()
    outcome = migrate(settings, sql=True, output=out)
    assert time.monotonic() - started < 5
    sql = out.getvalue()
    assert "CREATE TABLE notes" in sql and "CREATE TABLE jobs" in sql
    assert "CREATE TABLE users" in sql and "CREATE UNIQUE INDEX ix_user_email" in sql
    assert "CREATE INDEX CONCURRENTLY" in sql
    assert outcome.pending == ("0001", "0002", "0003", "0004")
    out = io.StringIO()
    migrate(settings_for(None), sql=True, output=out)  # no URL at all: PostgreSQL's dialect
    assert "CREATE TABLE notes" in out.getvalue()


def test_url_given_to_alembic_and_the_open_connection(
    postgres_server: PostgresServer, postgres_database: str, tmp_path: Path
) -> None:
    password = "mig%@/:pw%(here)s"
    postgres_server.create_role("percent_migrator", password, "SUPERUSER")
    url = postgres_server.url(
        user="percent_migrator",
        password=password,
        dbname=dbname_of(postgres_database),
        scheme="postgresql+asyncpg",
    )
    spy = tmp_path / "seen.txt"
    env_py = ENV_PY + (
        "\nopen(" + repr(str(spy)) + ", 'w').write(repr((config.get_main_option('sqlalchemy.url'),"
        " type(config.attributes.get('connection')).__name__)))\n"
    )
    config = project(tmp_path / "p", {"a": revision("a", None, CREATE_RUNS)})
    (config.parent / "migrations" / "env.py").write_text(env_py)
    migrate(settings_for(url, config))
    seen_url, connection_type = eval(spy.read_text())
    assert seen_url.startswith("postgresql+psycopg://percent_migrator:")
    assert "mig%25%40%2F%3Apw%25%28here%29s@" in seen_url  # %-escaped for ConfigParser: intact
    assert connection_type == "Connection"


def test_config_from_pyproject_and_relative_paths_from_any_directory(
    postgres_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = project(tmp_path / "svc", {"a": revision("a", None, CREATE_RUNS)}, pyproject=True)
    monkeypatch.chdir(tmp_path)  # not the project's folder
    settings = Settings.load(
        options={"database_url": postgres_database}, environ={}, cwd=config.parent
    )  # alembic.ini (the default) is missing: pyproject.toml's [tool.alembic] is used
    assert migrate(settings).applied == ("a",)

    ini = project(tmp_path / "svc2", {"a": revision("a", None, CREATE_RUNS)})
    assert "script_location = migrations" in ini.read_text()
    monkeypatch.chdir("/")
    assert migrate(settings_for(postgres_database, ini)).pending == ()  # found, at head


def test_missing_config_and_bad_target_are_config_errors(
    postgres_database: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="Alembic config"):
        migrate(settings_for(postgres_database, tmp_path / "alembic.ini"))
    with pytest.raises(ConfigError, match="nosuchrev"):
        migrate(settings_for(postgres_database), revision="nosuchrev")
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        migrate(settings_for(None))


def test_failing_revision_names_it_and_rolls_back(
    postgres_server: PostgresServer, postgres_database: str, tmp_path: Path
) -> None:
    config = project(
        tmp_path,
        {
            "a": revision("a", None, CREATE_RUNS),
            "b": revision(
                "b",
                "a",
                'op.create_table("half", sa.Column("x", sa.Integer))\nop.execute("SELECT 1/0")',
                doc="divide by zero",
            ),
        },
    )
    with pytest.raises(MigrationFailed) as caught:
        migrate(settings_for(postgres_database, config))
    message = str(caught.value)
    assert "migration b (divide by zero) failed" in message
    assert "division by zero" in message
    assert "the database is at base (empty)" in message  # PostgreSQL rolled it all back
    assert caught.value.exit_code == 30
    assert tables(postgres_server, dbname_of(postgres_database)) == set()


def test_database_ahead_of_the_code(postgres_database: str, tmp_path: Path) -> None:
    migrate(settings_for(postgres_database))
    older = project(
        tmp_path,
        {
            name: (EXAMPLE / "migrations" / "versions" / f"{name}.py").read_text()
            for name in ("0001_create_notes", "0002_create_jobs")
        },
    )
    with pytest.raises(UnknownRevision, match="0004") as caught:
        migrate(settings_for(postgres_database, older))
    assert caught.value.exit_code == 32
    ignored = settings_for(postgres_database, older, migrate_unknown="ignore")
    assert migrate(ignored).applied == ()
    wait_for_head(ignored)  # a replica of the older release starts too
    with pytest.raises(UnknownRevision):
        wait_for_head(settings_for(postgres_database, older))


def test_multiple_heads(postgres_database: str, tmp_path: Path) -> None:
    config = project(
        tmp_path,
        {
            "a": revision("a", None, CREATE_RUNS),
            "b1": revision("b1", "a", "record()"),
            "b2": revision("b2", "a", "record()"),
        },
    )
    with pytest.raises(MigrationFailed, match=r"several heads \(b1, b2\)") as caught:
        migrate(settings_for(postgres_database, config))
    assert "alembic merge heads" in str(caught.value)
    assert (
        migrate(settings_for(postgres_database, config, migrate_revision="heads")).applied[0] == "a"
    )
    assert migrate(settings_for(postgres_database, config), revision="heads").pending == ()


# -- the lock --------------------------------------------------------------------------------


def test_lock_waits_logs_the_holder_every_15_seconds_and_times_out(
    postgres_server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    holder = psycopg.connect(
        postgres_server.url(), autocommit=True, application_name="the other replica"
    )
    holder.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    caplog.set_level(logging.INFO, "entrykit.migrate")
    try:
        lock = postgres_migration_lock(
            postgres_server.url(), timeout=40, clock=lambda: now[0], sleep=sleep
        )
        with pytest.raises(MigrationLockTimeout, match="the other replica") as caught, lock:
            pass
        assert caught.value.exit_code == 31
        lines = [r.getMessage() for r in caplog.records if "held by" in r.getMessage()]
        assert len(lines) == 3, lines  # at 0, 15 and 30 s
        assert "(0 s so far)" in lines[0] and "the other replica" in lines[0]
        assert "(15 s so far)" in lines[1]
    finally:
        holder.close()
    with postgres_migration_lock(postgres_server.url(), timeout=1) as waited:  # free again
        assert waited < 1


def test_cancel_stops_the_lock_wait_promptly(postgres_server: PostgresServer) -> None:
    from entrykit.errors import Cancelled

    holder = psycopg.connect(postgres_server.url(), autocommit=True)
    holder.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    started = time.monotonic()
    try:
        lock = postgres_migration_lock(postgres_server.url(), timeout=60, cancel=cancel)
        with pytest.raises(Cancelled), lock:
            pass
    finally:
        holder.close()
    assert time.monotonic() - started < 1.0


class _TransactionPooler:
    """Statements go to alternating server sessions, as through PgBouncer in transaction
    mode with more than one server connection."""

    def __init__(self, url: str) -> None:
        self.sessions = [psycopg.connect(url, autocommit=True) for _ in range(2)]
        self.turn = 0

    def execute(self, query: str, params: Any = None) -> Any:
        self.turn += 1
        return self.sessions[self.turn % 2].execute(query, params)

    def close(self) -> None:
        for session in self.sessions:
            session.close()


def test_transaction_pooler_is_detected(postgres_server: PostgresServer) -> None:
    lock = postgres_migration_lock(postgres_server.url(), timeout=5, connect=_TransactionPooler)
    with pytest.raises(ConfigError, match="ENTRYKIT_MIGRATE_URL") as caught, lock:
        pass
    assert caught.value.exit_code == 10
    # and the lock the pooled session took is not left behind
    with postgres_migration_lock(postgres_server.url(), timeout=1):
        pass


@pytest.mark.slow
@pytest.mark.skipif(not PgBouncer.available(), reason="pgbouncer is not installed")
def test_cli_through_real_pgbouncer_exits_10_and_migrate_url_fixes_it(
    postgres_server: PostgresServer, postgres_database: str
) -> None:
    bouncer = PgBouncer(postgres_server).start()
    try:
        pooled = bouncer.url(dbname_of(postgres_database))
        env = {"DATABASE_URL": pooled, "ENTRYKIT_ALEMBIC_CONFIG": str(EXAMPLE_INI)}
        assert entrykit("wait", "--db", pooled, "--timeout", "10", env={}).returncode == 0
        result = entrykit("migrate", env=env)
        assert result.returncode == 10, result.stderr
        assert "ENTRYKIT_MIGRATE_URL" in result.stderr
        result = entrykit("migrate", env={**env, "ENTRYKIT_MIGRATE_URL": postgres_database})
        assert result.returncode == 0, result.stderr
    finally:
        bouncer.close()


# -- logging and fileConfig ------------------------------------------------------------------


@pytest.fixture
def entrykit_logging() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    stream = io.StringIO()
    logs.configure("info", "text", stream=stream)
    for name, logger in logging.Logger.manager.loggerDict.items():
        if name.startswith("alembic") and isinstance(logger, logging.Logger):
            logger.disabled = False  # an earlier test's dictConfig may have disabled them
    try:
        yield stream
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def test_entrykit_logging_survives_env_py_fileconfig(
    postgres_database: str, tmp_path: Path, entrykit_logging: io.StringIO
) -> None:
    before = logging.getLogger("entrykit.sidecar")  # exists before env.py runs
    config = project(
        tmp_path,
        {
            "a": revision(
                "a",
                None,
                CREATE_RUNS + 'import logging\nlogging.getLogger("entrykit.sidecar")'
                '.warning("logged from inside the migration")',
            )
        },
    )
    root_handlers = list(logging.getLogger().handlers)
    migrate(settings_for(postgres_database, config))
    before.warning("logged after the migration")
    text = entrykit_logging.getvalue()
    assert logging.getLogger().handlers == root_handlers
    assert not before.disabled
    # entrykit's format ("<ts> LEVEL step msg"), not alembic.ini's "%(levelname)-5.5s [name]"
    assert "WARNING sidecar  logged from inside the migration" in text
    assert "WARNING sidecar  logged after the migration" in text
    assert "INFO  migrate  Running upgrade  -> a" in text  # alembic's lines, our format
    assert "[alembic" not in text


# -- processes: many replicas at once --------------------------------------------------------


def _run_together(count: int, env: dict[str, str], *args: str) -> list[tuple[int, str]]:
    procs = [
        subprocess.Popen(
            [*ENTRYKIT, *args],
            env=clean_env(env),
            cwd="/",
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(count)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        results.append((proc.returncode, out + err))
    return results


@pytest.mark.slow
def test_six_replicas_at_once_each_revision_runs_once(
    postgres_server: PostgresServer, postgres_database: str, tmp_path: Path
) -> None:
    config = slow_project(tmp_path, seconds=1.5)
    env = {"DATABASE_URL": postgres_database, "ENTRYKIT_ALEMBIC_CONFIG": str(config)}
    results = _run_together(6, env, "migrate")
    assert [code for code, _ in results] == [0] * 6, "\n".join(out for _, out in results)
    runs = postgres_server.execute(
        "SELECT revision, count(*) FROM runs GROUP BY revision ORDER BY 1",
        dbname=dbname_of(postgres_database),
    )
    assert runs == [("a", 1), ("b", 1), ("c", 1)]
    output = "\n".join(out for _, out in results)
    assert output.count("applied a, b, c") == 1
    assert "waiting for the migration lock" in output  # they did overlap
    assert "another replica migrated the database" in output


@pytest.mark.slow
def test_sqlite_four_processes_at_once(tmp_path: Path) -> None:
    config = slow_project(tmp_path / "p", seconds=1.0, sqlite=True)
    database = tmp_path / "data" / "app.db"
    database.parent.mkdir()
    env = {"DATABASE_URL": f"sqlite:///{database}", "ENTRYKIT_ALEMBIC_CONFIG": str(config)}
    results = _run_together(4, env, "migrate")
    assert [code for code, _ in results] == [0] * 4, "\n".join(out for _, out in results)
    import sqlite3

    with sqlite3.connect(database) as conn:
        runs = conn.execute("SELECT revision, count(*) FROM runs GROUP BY 1 ORDER BY 1").fetchall()
    assert runs == [("a", 1), ("b", 1), ("c", 1)]
    assert (tmp_path / "data" / "app.db.migrate-lock").exists()


# -- processes: exit codes -------------------------------------------------------------------


@pytest.mark.slow
def test_cli_lock_held_by_someone_else_exits_31(
    postgres_server: PostgresServer, postgres_database: str
) -> None:
    holder = psycopg.connect(postgres_database, autocommit=True, application_name="held-by-test")
    holder.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
    try:
        started = time.monotonic()
        result = entrykit(
            "migrate",
            env={
                "DATABASE_URL": postgres_database,
                "ENTRYKIT_ALEMBIC_CONFIG": str(EXAMPLE_INI),
                "ENTRYKIT_MIGRATE_LOCK_TIMEOUT": "1",
            },
        )
        assert result.returncode == 31, result.stderr
        assert time.monotonic() - started < 30  # the 1 s timeout, not the 300 s default
        assert re.search(r"waited [12] s for the migration lock", result.stderr)
        assert "held-by-test" in result.stderr
        assert postgres_server.password not in result.stderr
    finally:
        holder.close()


@pytest.mark.slow
def test_cli_check_sql_revision_and_exit_codes(
    postgres_server: PostgresServer, postgres_database: str
) -> None:
    env = {"DATABASE_URL": postgres_database, "ENTRYKIT_ALEMBIC_CONFIG": str(EXAMPLE_INI)}
    result = entrykit("migrate", "--check", env=env)
    assert result.returncode == 1, result.stderr
    assert "4 pending: 0001" in result.stderr
    result = entrykit(
        "migrate",
        "--sql",
        env={**env, "DATABASE_URL": f"postgresql://u:p@127.0.0.1:{free_port()}/x"},
    )
    assert result.returncode == 0, result.stderr
    assert "CREATE TABLE notes" in result.stdout
    result = entrykit("migrate", "--revision", "0002", env=env)
    assert result.returncode == 0, result.stderr
    assert entrykit("migrate", "--check", env=env).returncode == 1
    assert entrykit("migrate", env=env).returncode == 0
    result = entrykit("migrate", "--check", env=env)
    assert result.returncode == 0, result.stderr
    assert postgres_server.password not in result.stderr
    # ENTRYKIT_MIGRATE_URL wins for migrations: DATABASE_URL may be a pooled or weaker one
    result = entrykit(
        "migrate",
        env={
            **env,
            "DATABASE_URL": "postgresql://u:p@db.invalid/x",
            "ENTRYKIT_MIGRATE_URL": postgres_database,
        },
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_cli_failing_unknown_and_multiple_heads_exit_codes(
    postgres_database: str, tmp_path: Path
) -> None:
    failing = project(
        tmp_path / "failing",
        {
            "a": revision("a", None, CREATE_RUNS),
            "b": revision("b", "a", 'op.execute("SELECT * FROM no_such_table")', doc="bad"),
        },
    )
    env = {"DATABASE_URL": postgres_database, "ENTRYKIT_ALEMBIC_CONFIG": str(failing)}
    result = entrykit("migrate", env=env)
    assert result.returncode == 30, result.stderr
    assert "migration b (bad) failed" in result.stderr

    two_heads = project(
        tmp_path / "heads",
        {
            "a": revision("a", None, CREATE_RUNS),
            "b1": revision("b1", "a", "record()"),
            "b2": revision("b2", "a", "record()"),
        },
    )
    result = entrykit("migrate", env={**env, "ENTRYKIT_ALEMBIC_CONFIG": str(two_heads)})
    assert result.returncode == 30, result.stderr
    assert "several heads" in result.stderr
    result = entrykit(
        "migrate",
        env={
            **env,
            "ENTRYKIT_ALEMBIC_CONFIG": str(two_heads),
            "ENTRYKIT_MIGRATE_REVISION": "heads",
        },
    )
    assert result.returncode == 0, result.stderr

    older = project(tmp_path / "older", {"a": revision("a", None, CREATE_RUNS)})
    result = entrykit("migrate", env={**env, "ENTRYKIT_ALEMBIC_CONFIG": str(older)})
    assert result.returncode == 32, result.stderr
    assert "b1" in result.stderr or "b2" in result.stderr
    result = entrykit(
        "migrate",
        env={**env, "ENTRYKIT_ALEMBIC_CONFIG": str(older), "ENTRYKIT_MIGRATE_UNKNOWN": "ignore"},
    )
    assert result.returncode == 0, result.stderr
    assert "do not know" in result.stderr

    result = entrykit("migrate", env={**env, "ENTRYKIT_ALEMBIC_CONFIG": str(tmp_path / "nope")})
    assert result.returncode == 10, result.stderr


@pytest.mark.slow
def test_run_with_migrate_1_then_exec(postgres_database: str) -> None:
    env = {
        "DATABASE_URL": postgres_database,
        "ENTRYKIT_ALEMBIC_CONFIG": str(EXAMPLE_INI),
        "ENTRYKIT_MIGRATE": "1",
    }
    result = entrykit("run", "--", sys.executable, "-c", "print('app started')", env=env)
    assert result.returncode == 0, result.stderr
    assert "app started" in result.stdout
    assert "applied 0001, 0002, 0003, 0004" in result.stderr


@pytest.mark.slow
def test_run_with_migrate_wait_execs_once_a_job_has_migrated(
    postgres_server: PostgresServer, postgres_database: str, tmp_path: Path
) -> None:
    env = {
        "DATABASE_URL": postgres_database,
        "ENTRYKIT_ALEMBIC_CONFIG": str(EXAMPLE_INI),
        "ENTRYKIT_MIGRATE": "wait",
        "ENTRYKIT_WAIT_TIMEOUT": "30",
    }
    log = tmp_path / "replica.log"
    with log.open("w") as stderr:
        replica = subprocess.Popen(
            [*ENTRYKIT, "run", "--", sys.executable, "-c", "print('replica started')"],
            env=clean_env(env),
            cwd="/",
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    started = time.monotonic()
    while "waiting for migrations to 0004" not in log.read_text():
        assert replica.poll() is None, log.read_text()
        assert time.monotonic() - started < 30, log.read_text()
        time.sleep(0.05)
    time.sleep(0.5)
    assert replica.poll() is None, "the replica must wait for the migration"
    migrated_at = time.monotonic()
    job = threading.Thread(target=migrate, args=(settings_for(postgres_database),))
    job.start()
    job.join()
    out, _ = replica.communicate(timeout=30)
    err = log.read_text()
    assert replica.returncode == 0, err
    assert "replica started" in out
    assert time.monotonic() - migrated_at < 3

    env["ENTRYKIT_WAIT_TIMEOUT"] = "1.5"
    env["DATABASE_URL"] = postgres_server.url(dbname=postgres_server.create_database())
    result = entrykit("run", "--", "true", env=env)
    assert result.returncode == 20, result.stderr
    assert "migration Job" in result.stderr
