"""Migrations under stress (docs/database.md): a SIGTERM or a ``kill -9`` in the middle of a
revision, an env.py that migrates another database, a broken alembic.ini, an env.py whose
settings fail with a multi-line message. Real PostgreSQL, real SQLite files, real processes
and signals.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from postgres_fixtures import PostgresServer
from test_migrate import (
    CREATE_RUNS,
    ENTRYKIT,
    clean_env,
    dbname_of,
    entrykit,
    project,
    revision,
    settings_for,
    tables,
)

from entrykit.errors import Cancelled, ConfigError, MigrationFailed
from entrykit.migrations.upgrade import migrate


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> float:
    """Poll ``condition`` until true; return the seconds it took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.05)
    return time.monotonic() - started


def stop_mid_statement(
    env: dict[str, str], running: Callable[[], object], stop: int, *args: str
) -> tuple[int, str]:
    """Start ``entrykit migrate`` (or ``entrykit ARGS``) with SLOW_MIGRATION=1, send ``stop``
    once ``running()`` is true (the slow statement is on the server); return its exit status
    and stderr."""
    proc = subprocess.Popen(
        [*ENTRYKIT, *(args or ["migrate"])],
        env=clean_env({**env, "SLOW_MIGRATION": "1"}),
        cwd="/",
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(running, 60, "the slow statement running")
        proc.send_signal(stop)
        code = proc.wait(timeout=5)
    finally:
        proc.kill()
        stderr = proc.communicate()[1]
    return code, stderr


# -- a stop in the middle of a PostgreSQL revision -------------------------------------------

SLOW_B = """
if os.environ.get("SLOW_MIGRATION"):
    op.execute("SELECT pg_sleep(60)")
op.create_table("things", sa.Column("x", sa.Integer))
record()
"""


def sleeping_backends(server: PostgresServer, dbname: str) -> list[int]:
    rows = server.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = %s AND query LIKE %s "
        "AND pid <> pg_backend_pid()",
        (dbname, "%pg_sleep(60)%"),
    )
    return [row[0] for row in rows]


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "kill-9"])
def test_a_stopped_migration_leaves_no_statement_running_and_the_next_replica_migrates(
    postgres_server: PostgresServer, postgres_database: str, tmp_path: Path, stop: int
) -> None:
    config = project(
        tmp_path, {"a": revision("a", None, CREATE_RUNS), "b": revision("b", "a", SLOW_B)}
    )
    dbname = dbname_of(postgres_database)
    env = {"DATABASE_URL": postgres_database, "ENTRYKIT_ALEMBIC_CONFIG": str(config)}
    code, stderr = stop_mid_statement(env, lambda: sleeping_backends(postgres_server, dbname), stop)
    assert code == (143 if stop == signal.SIGTERM else -signal.SIGKILL), stderr
    gone_after = wait_until(
        lambda: not sleeping_backends(postgres_server, dbname), 5, "statement ended"
    )
    if stop == signal.SIGTERM:  # cancelled before the exit
        assert "cancelled the statement running on the server" in stderr
        assert gone_after < 0.5
    else:  # the server notices the vanished client (client_connection_check_interval)
        assert gone_after < 2.0
    assert postgres_server.password not in stderr
    started = time.monotonic()
    second = entrykit("migrate", env=env)
    assert second.returncode == 0, second.stderr
    assert time.monotonic() - started < 15  # a process start, not a 60 s statement
    assert "waiting for the migration lock" not in second.stderr
    assert "applied a, b" in second.stderr  # one transaction for both: all rolled back
    runs = postgres_server.execute("SELECT revision FROM runs ORDER BY 1", dbname=dbname)
    assert runs == [("a",), ("b",)]


SLOW_MIGRATOR = """
import os, psycopg
with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
    conn.execute("CREATE TABLE IF NOT EXISTS things (x int)")
    if os.environ.get("SLOW_MIGRATION"):
        conn.execute("SELECT pg_sleep(60)")
"""


@pytest.mark.slow
def test_a_stopped_migrate_command_leaves_no_session_running(
    postgres_server: PostgresServer, postgres_database: str, tmp_path: Path
) -> None:
    """A project's own migrator (Django's, here a psycopg script) killed mid-statement: its
    session on the server ends too, so the next replica does not wait behind it."""
    script = tmp_path / "migrator.py"
    script.write_text(SLOW_MIGRATOR)
    dbname = dbname_of(postgres_database)
    env = {
        "DATABASE_URL": postgres_database,
        "ENTRYKIT_MIGRATE_COMMAND": f"{sys.executable} {script}",
    }
    code, stderr = stop_mid_statement(
        env, lambda: sleeping_backends(postgres_server, dbname), signal.SIGTERM
    )
    assert code == 143, stderr
    assert "ended the migrate command's 1 session(s) on the server" in stderr
    assert wait_until(lambda: not sleeping_backends(postgres_server, dbname), 5, "gone") < 1.0
    assert postgres_server.password not in stderr
    started = time.monotonic()
    second = entrykit("migrate", env=env)
    assert second.returncode == 0, second.stderr
    assert time.monotonic() - started < 15  # not behind a 60 s statement


@pytest.mark.slow
def test_sigterm_to_run_with_migrate_1_cancels_the_statement_and_execs_nothing(
    postgres_server: PostgresServer, postgres_database: str, tmp_path: Path
) -> None:
    config = project(
        tmp_path, {"a": revision("a", None, CREATE_RUNS), "b": revision("b", "a", SLOW_B)}
    )
    dbname = dbname_of(postgres_database)
    marker = tmp_path / "exec-ran"
    env = {
        "DATABASE_URL": postgres_database,
        "ENTRYKIT_ALEMBIC_CONFIG": str(config),
        "ENTRYKIT_MIGRATE": "1",
    }
    code, stderr = stop_mid_statement(
        env,
        lambda: sleeping_backends(postgres_server, dbname),
        signal.SIGTERM,
        *["run", "--", "touch", str(marker)],
    )
    assert code == 143, stderr
    assert "cancelled the statement running on the server" in stderr
    wait_until(lambda: not sleeping_backends(postgres_server, dbname), 0.5, "statement ended")
    assert not marker.exists()
    assert tables(postgres_server, dbname) == set()


def test_cancel_event_cancels_the_running_statement(
    postgres_server: PostgresServer, postgres_database: str, tmp_path: Path
) -> None:
    slow = SLOW_B.replace('if os.environ.get("SLOW_MIGRATION"):\n    ', "")
    config = project(
        tmp_path, {"a": revision("a", None, CREATE_RUNS), "b": revision("b", "a", slow)}
    )
    dbname = dbname_of(postgres_database)
    cancel = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            migrate(settings_for(postgres_database, config), cancel=cancel)
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    wait_until(lambda: sleeping_backends(postgres_server, dbname), 60, "pg_sleep running")
    cancel.set()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert [type(error) for error in errors] == [Cancelled]
    assert "stopped during migration" in str(errors[0])
    wait_until(lambda: not sleeping_backends(postgres_server, dbname), 0.5, "statement ended")
    assert tables(postgres_server, dbname) == set()  # rolled back, lock released
    assert migrate(
        settings_for(
            postgres_database, project(tmp_path / "q", {"a": revision("a", None, CREATE_RUNS)})
        )
    ).applied == ("a",)


# -- SQLite: kill -9 in the middle of a revision ---------------------------------------------

# The standard template: its own engine from sqlalchemy.url, the offered connection ignored.
OWN_ENGINE_ENV_PY = """\
from alembic import context
from sqlalchemy import engine_from_config, pool

config = context.config

connectable = engine_from_config(
    config.get_section(config.config_ini_section, {}), prefix="sqlalchemy.",
    poolclass=pool.NullPool,
)
with connectable.connect() as connection:
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()
"""

HALF_DONE_B = """
op.create_table("things", sa.Column("x", sa.Integer))
op.add_column("runs", sa.Column("extra", sa.Integer))
record()
marker = os.environ.get("MIGRATION_MARKER")
if marker:
    open(marker, "w").close()
    time.sleep(60)
"""


@pytest.mark.slow
@pytest.mark.parametrize("env_py", ["offered connection", "own engine"])
def test_sqlite_kill_9_mid_revision_leaves_the_last_whole_revision(
    tmp_path: Path, env_py: str
) -> None:
    config = project(
        tmp_path / "p",
        {
            "a": revision("a", None, CREATE_RUNS),
            "b": revision("b", "a", HALF_DONE_B),
            "c": revision("c", "b", 'op.create_table("more", sa.Column("y", sa.Integer))'),
        },
    )
    if env_py == "own engine":
        (config.parent / "migrations" / "env.py").write_text(OWN_ENGINE_ENV_PY)
    database = tmp_path / "app.db"
    marker = tmp_path / "in-revision-b"
    env = {"DATABASE_URL": f"sqlite:///{database}", "ENTRYKIT_ALEMBIC_CONFIG": str(config)}
    proc = subprocess.Popen(
        [*ENTRYKIT, "migrate"],
        env=clean_env({**env, "MIGRATION_MARKER": str(marker)}),
        cwd="/",
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(marker.exists, 60, "revision b half done")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=5)
    finally:
        proc.kill()
        proc.communicate()
    with sqlite3.connect(database) as conn:
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [("a",)]
        columns = [row[1] for row in conn.execute("PRAGMA table_info(runs)")]
        assert conn.execute("SELECT revision FROM runs").fetchall() == [("a",)]
    assert "things" not in names
    assert "extra" not in columns
    result = entrykit("migrate", env=env)
    assert result.returncode == 0, result.stderr
    assert "applied b, c" in result.stderr
    with sqlite3.connect(database) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [("c",)]


def test_sqlite_failing_revision_rolls_back_its_ddl(tmp_path: Path) -> None:
    config = project(
        tmp_path / "p",
        {
            "a": revision("a", None, CREATE_RUNS),
            "b": revision("b", "a", 'op.create_table("things", sa.Column("x", sa.Integer))\n1 / 0'),
        },
    )
    database = tmp_path / "app.db"
    with pytest.raises(MigrationFailed, match=r"migration b \(revision b\) failed"):
        migrate(settings_for(f"sqlite:///{database}", config))
    with sqlite3.connect(database) as conn:
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [("a",)]
    assert "things" not in names


# -- an env.py that migrates another database ------------------------------------------------

TEMPLATE_URL = """\
import os
from urllib.parse import quote


def get_url():
    return "postgresql+psycopg://{}:{}@{}:{}/{}".format(
        quote(os.environ["POSTGRES_USER"], safe=""),
        quote(os.environ["POSTGRES_PASSWORD"], safe=""),
        os.environ["POSTGRES_SERVER"],
        os.environ["POSTGRES_PORT"],
        os.environ["POSTGRES_DB"],
    )
"""

# The FastAPI full-stack template's env.py, online part: its own URL from its settings.
SYNC_ENV_PY = (
    "from alembic import context\nfrom sqlalchemy import engine_from_config, pool\n"
    + TEMPLATE_URL
    + """
config = context.config


def do_run_migrations(connection):
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online():
    # FIX
    configuration = config.get_section(config.config_ini_section, {})
    configuration["sqlalchemy.url"] = get_url()
    connectable = engine_from_config(
        configuration, prefix="sqlalchemy.", poolclass=pool.NullPool
    )
    with connectable.connect() as connection:
        do_run_migrations(connection)


run_migrations_online()
"""
)

# minimal-fastapi-postgres-template's env.py: async, its own URL.
ASYNC_ENV_PY = (
    "import asyncio\nfrom alembic import context\n"
    "from sqlalchemy.ext.asyncio import create_async_engine\n"
    + TEMPLATE_URL
    + """
config = context.config


def do_run_migrations(connection):
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations():
    connectable = create_async_engine(get_url())
    async with connectable.connect() as connection:
        await connection.run_sync(do_run_migrations)
    await connectable.dispose()


def run_migrations_online():
    # FIX
    asyncio.run(run_async_migrations())


run_migrations_online()
"""
)

# The two lines docs/database.md and the error message give.
FIX = """\
    if (connection := config.attributes.get("connection")) is not None:
        return do_run_migrations(connection)"""


def template_settings(server: PostgresServer, dbname: str) -> dict[str, str]:
    """The variables the templates' env.py builds its URL from, naming ``dbname``."""
    return {
        "POSTGRES_USER": server.superuser,
        "POSTGRES_PASSWORD": server.password,
        "POSTGRES_SERVER": server.host,
        "POSTGRES_PORT": str(server.port),
        "POSTGRES_DB": dbname,
    }


@pytest.mark.slow
@pytest.mark.parametrize("env_py", [SYNC_ENV_PY, ASYNC_ENV_PY], ids=["sync", "async"])
def test_env_py_migrating_another_database_is_exit_30_and_the_two_line_fix_works(
    postgres_server: PostgresServer, tmp_path: Path, env_py: str
) -> None:
    tpl_a = postgres_server.create_database()
    tpl_b = postgres_server.create_database()
    config = project(tmp_path, {"a": revision("a", None, CREATE_RUNS)})
    env_file = config.parent / "migrations" / "env.py"
    env_file.write_text(env_py)
    env = {
        "DATABASE_URL": postgres_server.url(dbname=tpl_a),
        "ENTRYKIT_ALEMBIC_CONFIG": str(config),
        **template_settings(postgres_server, tpl_b),
    }
    result = entrykit("migrate", env=env)
    assert result.returncode == 30, result.stderr
    assert "the migration went to another database" in result.stderr
    assert 'config.attributes.get("connection")' in result.stderr
    assert "applied a" in result.stderr  # env.py did migrate: tpl_b
    assert tables(postgres_server, tpl_b) == {"runs", "alembic_version"}
    assert tables(postgres_server, tpl_a) == set()
    assert postgres_server.password not in result.stderr

    again = entrykit("migrate", env=env)  # env.py now says "at head": still not a success
    assert again.returncode == 30, again.stderr
    assert "the migration went to another database" in again.stderr
    assert tables(postgres_server, tpl_a) == set()

    env_file.write_text(env_py.replace("    # FIX", FIX))
    fixed = entrykit("migrate", env=env)
    assert fixed.returncode == 0, fixed.stderr
    assert tables(postgres_server, tpl_a) == {"runs", "alembic_version"}


def test_env_py_reading_another_database_fails_wait_for_head_too(
    postgres_server: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from entrykit.migrations.upgrade import wait_for_head

    tpl_a = postgres_server.create_database()
    tpl_b = postgres_server.create_database()
    config = project(tmp_path, {"a": revision("a", None, CREATE_RUNS)})
    (config.parent / "migrations" / "env.py").write_text(SYNC_ENV_PY)
    for name, value in template_settings(postgres_server, tpl_b).items():
        monkeypatch.setenv(name, value)
    with pytest.raises(MigrationFailed, match="another database"):
        migrate(settings_for(postgres_server.url(dbname=tpl_a), config))
    with pytest.raises(MigrationFailed, match="another database"):
        wait_for_head(settings_for(postgres_server.url(dbname=tpl_a), config))


# -- a broken alembic.ini, and env.py failures with long messages ----------------------------

BROKEN_INIS = {
    "no section header": "script_location = migrations\n",
    "a line that is no option": "[alembic]\nscript_location = migrations\nthis is not an option\n",
    "an option twice": "[alembic]\nscript_location = migrations\nscript_location = other\n",
    "a section twice": "[alembic]\nscript_location = migrations\n[alembic]\n",
    "a bad interpolation": "[alembic]\nscript_location = %(nowhere)s/migrations\n",
}


@pytest.mark.parametrize("text", BROKEN_INIS.values(), ids=BROKEN_INIS.keys())
def test_broken_alembic_ini_is_a_config_error(tmp_path: Path, text: str) -> None:
    config = project(tmp_path, {"a": revision("a", None, CREATE_RUNS)})
    config.write_text(text)
    with pytest.raises(ConfigError, match=str(config)):
        migrate(settings_for(f"sqlite:///{tmp_path / 'app.db'}", config))


BROKEN_TOOL_TABLES = {
    "script_location a number": "[tool.alembic]\nscript_location = 5\n",
    "script_location a list": '[tool.alembic]\nscript_location = ["migrations"]\n',
    "version_locations a number": (
        '[tool.alembic]\nscript_location = "migrations"\nversion_locations = 5\n'
    ),
    "alembic not a table": "[tool]\nalembic = 3\n",
}


@pytest.mark.parametrize("text", BROKEN_TOOL_TABLES.values(), ids=BROKEN_TOOL_TABLES.keys())
def test_a_tool_alembic_value_of_the_wrong_type_is_a_config_error(
    tmp_path: Path, text: str
) -> None:
    pyproject = project(tmp_path, {"a": revision("a", None, CREATE_RUNS)}, pyproject=True)
    pyproject.write_text(text)
    with pytest.raises(ConfigError, match="does not parse"):
        migrate(settings_for(f"sqlite:///{tmp_path / 'app.db'}", pyproject))


def test_broken_logging_section_is_a_config_error(tmp_path: Path) -> None:
    config = project(tmp_path, {"a": revision("a", None, CREATE_RUNS)})
    config.write_text(config.read_text().replace("keys = console", "keys = nosuchhandler"))
    with pytest.raises(ConfigError, match="logging sections"):
        migrate(settings_for(f"sqlite:///{tmp_path / 'app.db'}", config))


@pytest.mark.slow
def test_cli_broken_alembic_ini_and_pyproject_exit_10(tmp_path: Path) -> None:
    config = project(tmp_path / "ini", {"a": revision("a", None, CREATE_RUNS)})
    config.write_text(BROKEN_INIS["no section header"])
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'app.db'}", "ENTRYKIT_ALEMBIC_CONFIG": ""}
    result = entrykit("migrate", env={**env, "ENTRYKIT_ALEMBIC_CONFIG": str(config)})
    assert result.returncode == 10, result.stderr
    assert "does not parse" in result.stderr and "Traceback" not in result.stderr
    pyproject = project(tmp_path / "toml", {"a": revision("a", None, CREATE_RUNS)}, pyproject=True)
    pyproject.write_text('[tool.alembic]\nscript_location = "migrations\n')
    result = entrykit("migrate", env={**env, "ENTRYKIT_ALEMBIC_CONFIG": str(pyproject)})
    assert result.returncode == 10, result.stderr
    assert "does not parse" in result.stderr and "Traceback" not in result.stderr


# An env.py whose settings fail to load, as pydantic-settings projects do: the field is named
# on the second line, and the password of the database URL (decoded) is in the message.
SETTINGS_ENV_PY = """\
import os
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel


class Settings(BaseModel):
    FIRST_SUPERUSER: str
    POSTGRES_PORT: int


Settings(POSTGRES_PORT=unquote(urlsplit(os.environ["DATABASE_URL"]).password))
"""


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["text", "json"])
def test_env_py_settings_failure_keeps_the_whole_message_redacted(
    postgres_server: PostgresServer, postgres_database: str, tmp_path: Path, fmt: str
) -> None:
    config = project(tmp_path, {"a": revision("a", None, CREATE_RUNS)})
    env_file = config.parent / "migrations" / "env.py"
    head, future, rest = env_file.read_text().partition("from __future__ import annotations\n")
    env_file.write_text(head + future + SETTINGS_ENV_PY + rest)
    result = entrykit(
        "migrate",
        env={
            "DATABASE_URL": postgres_database,
            "ENTRYKIT_ALEMBIC_CONFIG": str(config),
            "ENTRYKIT_LOG_FORMAT": fmt,
        },
    )
    assert result.returncode == 30, result.stderr
    err = result.stderr
    assert "ValidationError: 2 validation errors for Settings" in err
    newline = "\n" if fmt == "text" else "\\n"  # JSON escapes it
    assert newline.join(["", "    FIRST_SUPERUSER", "      Field required"]) in err  # indented
    assert "input_value='***'" in err
    assert postgres_server.password not in err


def test_failing_revision_keeps_the_whole_message(postgres_database: str, tmp_path: Path) -> None:
    body = 'raise RuntimeError("first line\\nsecond line names the cause\\n  and a detail")'
    config = project(
        tmp_path, {"a": revision("a", None, CREATE_RUNS), "b": revision("b", "a", body)}
    )
    with pytest.raises(MigrationFailed) as caught:
        migrate(settings_for(postgres_database, config))
    assert str(caught.value).endswith(
        "RuntimeError: first line\n    second line names the cause\n      and a detail"
    )
    assert "migration b (revision b) failed, the database is at base (empty)" in str(caught.value)
