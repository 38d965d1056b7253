"""`entrykit run` end to end: migrations and prefetch side by side, against a real PostgreSQL
and the local Hub; start-up commands and other migrators (docs/commands.md)."""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from entrykit_process import ENTRYKIT, clean_env, run_entrykit
from hub_fixtures import LocalHub, generated_bytes
from postgres_fixtures import PostgresServer

EXAMPLE = Path(__file__).parent.parent / "examples" / "fastapi-app"

pytestmark = pytest.mark.slow

REVISION = '''
"""{doc}"""
from alembic import op

revision = "{rev}"
down_revision = {down!r}
branch_labels = None
depends_on = None


def upgrade() -> None:
{body}


def downgrade() -> None:
    pass
'''


def alembic_project(root: Path, revisions: list[tuple[str, str]]) -> Path:
    """The example's alembic.ini and env.py with our own revisions: (id, upgrade body)."""
    shutil.copy(EXAMPLE / "alembic.ini", root / "alembic.ini")
    (root / "migrations" / "versions").mkdir(parents=True)
    for name in ("env.py", "script.py.mako"):
        shutil.copy(EXAMPLE / "migrations" / name, root / "migrations" / name)
    down = None
    for rev, body in revisions:
        text = REVISION.format(doc=rev, rev=rev, down=down, body=body)
        (root / "migrations" / "versions" / f"{rev}.py").write_text(text)
        down = rev
    return root / "alembic.ini"


def run_env(
    hub: LocalHub, tmp_path: Path, database: str, config: Path, models: str, **extra: str
) -> dict[str, str]:
    """`run` migrating ``database`` with ``config`` and prefetching ``models`` from ``hub``."""
    return hub.env(
        tmp_path / "hf",
        base=clean_env(tmp_path / "secrets"),
        DATABASE_URL=database,
        ENTRYKIT_MIGRATE="1",
        ENTRYKIT_ALEMBIC_CONFIG=str(config),
        ENTRYKIT_HF_MODELS=models,
        **extra,
    )


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*ENTRYKIT, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@pytest.fixture
def slow_hub() -> Iterator[LocalHub]:
    """A repo whose 32 MB file takes half a minute at 1 MB/s."""
    with LocalHub(bandwidth=1_000_000) as hub:
        hub.add_repo("acme/big", {"config.json": b"{}", "model.bin": generated_bytes(32_000_000)})
        yield hub


def test_a_failing_migration_stops_a_slow_prefetch(
    tmp_path: Path, postgres_database: str, slow_hub: LocalHub
) -> None:
    config = alembic_project(
        tmp_path,
        [
            ("0001", "    op.execute('CREATE TABLE t (id int)')"),
            ("0002", "    op.execute('SELECT no_such_function()')"),
        ],
    )
    env = run_env(slow_hub, tmp_path, postgres_database, config, "acme/big")
    started = time.monotonic()
    process = start(["run", "--", "touch", str(tmp_path / "app-started")], env)
    _, stderr = process.communicate(timeout=60)
    elapsed = time.monotonic() - started
    assert process.returncode == 30, stderr
    assert elapsed < 15, f"the prefetch was not stopped: {elapsed:.1f} s"  # it needs 32 s
    assert "0002" in stderr and "(exit 30)" in stderr
    assert "prefetch start" in stderr
    assert not (tmp_path / "app-started").exists()


def test_a_refused_prefetch_stops_a_slow_migration(
    tmp_path: Path, postgres_server: PostgresServer, postgres_database: str
) -> None:
    config = alembic_project(
        tmp_path,
        [
            (
                "0001",
                "    op.execute('CREATE TABLE slow (id int)')\n    op.execute('SELECT pg_sleep(30)')",
            )
        ],
    )
    with LocalHub() as hub:
        env = run_env(hub, tmp_path, postgres_database, config, "acme/does-not-exist")
        started = time.monotonic()
        process = start(["run", "--", "true"], env)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 42, stderr
    assert time.monotonic() - started < 15, "the migration was not stopped"
    assert "huggingface_token" in stderr or "not found" in stderr
    dbname = postgres_database.rsplit("/", 1)[1]
    # The connection died with the process: PostgreSQL rolled the revision back.
    deadline = time.monotonic() + 10
    while postgres_server.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND query LIKE %s",
        (dbname, "%pg_sleep%"),
    )[0][0]:
        assert time.monotonic() < deadline, "the slow migration kept running"
        time.sleep(0.2)
    tables = postgres_server.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'slow'", dbname=dbname
    )
    assert tables[0][0] == 0


def test_migrations_and_prefetch_run_side_by_side(tmp_path: Path, postgres_database: str) -> None:
    config = alembic_project(
        tmp_path,
        [
            (
                "0001",
                "    op.execute('CREATE TABLE t (id int)')\n    op.execute('SELECT pg_sleep(1.5)')",
            )
        ],
    )
    with LocalHub(bandwidth=2_000_000) as hub:
        hub.add_repo("acme/small", {"config.json": b"{}", "model.bin": generated_bytes(3_000_000)})
        env = run_env(
            hub, tmp_path, postgres_database, config, "acme/small", ENTRYKIT_HF_OFFLINE="1"
        )
        process = start(["run", "--", "sh", "-c", "echo HF_HUB_OFFLINE=$HF_HUB_OFFLINE"], env)
        stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert stdout == "HF_HUB_OFFLINE=1\n"
    events = [
        (line.split()[2], line.split()[3])
        for line in stderr.splitlines()
        if len(line.split()) > 3 and line.split()[2] in ("migrate", "prefetch")
    ]
    starts = [i for i, (_, word) in enumerate(events) if word == "start"]
    dones = [i for i, (_, word) in enumerate(events) if word == "done"]
    assert len(starts) == 2 and len(dones) == 2, events
    assert max(starts) < min(dones), "one step waited for the other"
    exec_line = next(line for line in stderr.splitlines() if " exec " in line)
    assert "migrate" in exec_line and "prefetch" in exec_line and "total" in exec_line


# -- other migrators: ENTRYKIT_MIGRATE_COMMAND ---------------------------------------------

# A project's own migrator on SQLite: applies steps 1..3, recording each; it reads what is
# applied, then applies the rest after a pause, so two copies at once apply a step twice.
MIGRATOR = """
import os, sqlite3, sys, time
db = sqlite3.connect(os.environ["DATABASE_URL"].removeprefix("sqlite:///"), timeout=30)
db.execute("CREATE TABLE IF NOT EXISTS applied (step int, pid int)")
db.commit()
done = {row[0] for row in db.execute("SELECT step FROM applied")}
pending = [step for step in (1, 2, 3) if step not in done]
if "--check" in sys.argv:
    print(f"{len(pending)} pending")
    sys.exit(1 if pending else 0)
if os.environ.get("MIGRATOR_FAIL"):
    print("step 2: no such column: nope", file=sys.stderr)
    sys.exit(4)
time.sleep(0.3)
for step in pending:
    db.execute("INSERT INTO applied VALUES (?, ?)", (step, os.getpid()))
    db.commit()
    print(f"applied step {step}")
"""


def migrator_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "migrator.py").write_text(MIGRATOR)
    (tmp_path / "secrets").mkdir(exist_ok=True)
    program = f"{sys.executable} {tmp_path / 'migrator.py'}"
    env = clean_env(
        tmp_path / "secrets",
        DATABASE_URL=f"sqlite:///{tmp_path}/app.db",
        ENTRYKIT_MIGRATE="1",
        ENTRYKIT_MIGRATE_COMMAND=program,
        ENTRYKIT_MIGRATE_CHECK_COMMAND=f"{program} --check",
    )
    return {**env, **extra}


def applied_steps(tmp_path: Path) -> list[tuple[int, int]]:
    with sqlite3.connect(tmp_path / "app.db") as db:
        return list(db.execute("SELECT step, count(*) FROM applied GROUP BY step ORDER BY step"))


def test_replicas_run_the_migrate_command_one_at_a_time(tmp_path: Path) -> None:
    env = migrator_env(tmp_path, ENTRYKIT_PRESTART="echo prestart ran")
    procs = [start(["run", "--", "true"], env) for _ in range(4)]
    results = [(proc.communicate(timeout=60)[1], proc.returncode)[::-1] for proc in procs]
    assert [code for code, _ in results] == [0] * 4, results
    assert applied_steps(tmp_path) == [(1, 1), (2, 1), (3, 1)]
    appliers = [err for _, err in results if "migrate-command | applied step 1" in err]
    assert len(appliers) == 1
    # Its output lines are of step migrate; the start-up command ran after the migrations.
    lines = appliers[0].splitlines()
    migrate_at = next(
        i for i, text in enumerate(lines) if "migrate-command | applied step 3" in text
    )
    assert lines[migrate_at].split()[2] == "migrate"
    prestart_at = next(i for i, text in enumerate(lines) if "echo | prestart ran" in text)
    exec_at = next(i for i, text in enumerate(lines) if text.split()[2] == "exec")
    assert migrate_at < prestart_at < exec_at


def test_at_head_the_check_command_answers_without_the_lock(tmp_path: Path) -> None:
    env = migrator_env(tmp_path, ENTRYKIT_MIGRATE_LOCK_TIMEOUT="1")
    first = subprocess.run([*ENTRYKIT, "migrate"], env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    # Another replica holds the migration lock all along: at head, nobody needs it.
    fd = os.open(tmp_path / "app.db.migrate-lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        again = subprocess.run(
            [*ENTRYKIT, "run", "--", "true"], env=env, capture_output=True, text=True
        )
    finally:
        os.close(fd)
    assert again.returncode == 0, again.stderr
    assert "nothing to do" in again.stderr
    assert "migrate-command:" not in again.stderr and "waiting for" not in again.stderr


def test_a_failing_migrate_command_is_exit_30_naming_it(tmp_path: Path) -> None:
    env = migrator_env(tmp_path, MIGRATOR_FAIL="1", ENTRYKIT_PRESTART="echo should not run")
    result = subprocess.run(
        [*ENTRYKIT, "run", "--", "true"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 30, result.stderr
    failure = next(line for line in result.stderr.splitlines() if "(exit 30)" in line)
    assert "migrator.py" in failure and "status 4" in failure
    assert "migrate-command | step 2: no such column: nope" in result.stderr
    assert "should not run" not in result.stderr


def test_migrate_check_with_a_command(tmp_path: Path) -> None:
    env = migrator_env(tmp_path)
    check = [*ENTRYKIT, "migrate", "--check"]
    pending = subprocess.run(check, env=env, capture_output=True, text=True, timeout=60)
    assert pending.returncode == 1, pending.stderr
    assert subprocess.run([*ENTRYKIT, "migrate"], env=env, timeout=60).returncode == 0
    at_head = subprocess.run(check, env=env, capture_output=True, text=True, timeout=60)
    assert at_head.returncode == 0, at_head.stderr
    for args, extra in (
        (["migrate", "--check"], {"ENTRYKIT_MIGRATE_CHECK_COMMAND": ""}),
        (["migrate", "--sql"], {}),
        (["run", "--", "true"], {"ENTRYKIT_MIGRATE": "wait", "ENTRYKIT_MIGRATE_CHECK_COMMAND": ""}),
    ):
        result = subprocess.run(
            [*ENTRYKIT, *args], env={**env, **extra}, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 10, (args, result.stderr)


def test_wait_mode_polls_the_check_command_until_it_exits_0(tmp_path: Path) -> None:
    env = migrator_env(tmp_path, ENTRYKIT_MIGRATE="wait", ENTRYKIT_WAIT_TIMEOUT="60")
    waiter = start(["run", "--", "true"], env)
    time.sleep(2)
    assert waiter.poll() is None
    assert (
        subprocess.run([*ENTRYKIT, "migrate"], env={**env, "ENTRYKIT_MIGRATE": "1"}).returncode == 0
    )
    migrated = time.monotonic()
    _, stderr = waiter.communicate(timeout=30)
    assert waiter.returncode == 0, stderr
    assert time.monotonic() - migrated < 2.5  # at most 1 s between runs of the check command
    assert "migrate-command" not in stderr  # the waiter never migrated

    late = subprocess.run(
        [*ENTRYKIT, "run", "--", "true"],
        env={
            **migrator_env(tmp_path / "fresh"),
            "ENTRYKIT_MIGRATE": "wait",
            "ENTRYKIT_WAIT_TIMEOUT": "2",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert late.returncode == 20, late.stderr


def test_the_example_creates_its_initial_data_once(tmp_path: Path) -> None:
    """The FastAPI example's `initial-data` command (once = true) by four replicas at once: one
    creates the first superuser, with the password from its secret file, hashed."""
    password = "first-superuser-" + os.urandom(6).hex()
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "first_superuser_password").write_text(password + "\n")
    env = clean_env(
        tmp_path / "secrets",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        DATABASE_URL=f"sqlite:///{tmp_path}/app.db",
        FIRST_SUPERUSER="admin@example.com",
    )
    procs = [
        subprocess.Popen(
            [*ENTRYKIT, "run", "--", "true"],
            env=env,
            cwd=EXAMPLE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    results = [(proc.communicate(timeout=120)[1], proc.returncode)[::-1] for proc in procs]
    assert [code for code, _ in results] == [0] * 4, results
    stderr = "\n".join(err for _, err in results)
    created = "initial-data | created the first superuser admin@example.com (user 1)"
    assert stderr.count(created) == 1, stderr
    assert stderr.count("initial-data | first superuser admin@example.com already there") == 3
    assert password not in stderr
    with sqlite3.connect(tmp_path / "app.db") as db:
        users = db.execute("SELECT email, hashed_password, is_superuser FROM users").fetchall()
    assert [(email, superuser) for email, _, superuser in users] == [("admin@example.com", 1)]
    scheme, params, salt, digest = users[0][1].split("$")
    cost = {name: int(value) for name, value in (pair.split("=") for pair in params.split(","))}
    assert scheme == "scrypt" and cost["n"] >= 2**14, users
    for guess, matches in ((password, True), (password + "x", False)):
        computed = hashlib.scrypt(guess.encode(), salt=base64.b64decode(salt), **cost)
        assert (computed == base64.b64decode(digest)) is matches
    assert password not in users[0][1]


def test_the_example_initial_data_without_a_superuser_or_its_password(tmp_path: Path) -> None:
    """No FIRST_SUPERUSER: nothing to create; an e-mail without the password file: exit 50,
    the one line saying what is missing."""
    env = clean_env(
        tmp_path / "secrets",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        DATABASE_URL=f"sqlite:///{tmp_path}/app.db",
    )
    nobody = run_entrykit(["run", "--", "true"], env, cwd=EXAMPLE, timeout=120)
    assert nobody.returncode == 0, nobody.stderr
    assert "initial-data | FIRST_SUPERUSER is not set: no first superuser to create" in (
        nobody.stderr
    )
    env["FIRST_SUPERUSER"] = "admin@example.com"
    no_password = run_entrykit(["run", "--", "true"], env, cwd=EXAMPLE, timeout=120)
    assert no_password.returncode == 50, no_password.stderr
    said = [line for line in no_password.stderr.splitlines() if "initial-data | " in line]
    assert len(said) == 1 and said[0].endswith(
        "initial-data | FIRST_SUPERUSER is admin@example.com but FIRST_SUPERUSER_PASSWORD is not"
        " set: put the password in the secret file first_superuser_password"
    ), no_password.stderr
    with sqlite3.connect(tmp_path / "app.db") as db:
        assert db.execute("SELECT count(*) FROM users").fetchone() == (0,)


def test_plan_shows_the_migrate_command_and_the_start_up_commands(tmp_path: Path) -> None:
    (tmp_path / "entrykit.toml").write_text(
        'migrate = "1"\nmigrate_command = "flask db upgrade"\n'
        'migrate_check_command = "flask db check"\n'
        '[[commands]]\nname = "initial-data"\nrun = ["python", "-m", "app.initial_data"]\n'
        'once = true\ntimeout = 120\nenv = { SEED_TOKEN = "not-shown-value" }\n'
        '[[commands]]\nrun = "python manage.py collectstatic --noinput"\n'
    )
    env = clean_env(tmp_path / "secrets", DATABASE_URL=f"sqlite:///{tmp_path}/app.db")
    text = subprocess.run(
        [*ENTRYKIT, "plan", "--", "gunicorn"], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert text.returncode == 0, text.stderr
    steps = text.stdout.split("steps:")[1]
    assert (
        "migrate: flask db upgrade under the migration lock, unless flask db check exits 0" in steps
    )
    assert (
        "prestart: initial-data: python -m app.initial_data "
        "(once, under the lock initial-data; timeout 120 s; env SEED_TOKEN)"
    ) in steps
    assert "prestart: python: python manage.py collectstatic --noinput\n" in steps
    assert steps.index("initial-data") < steps.index("collectstatic") < steps.index("exec:")
    assert "not-shown-value" not in text.stdout
    as_json = subprocess.run(
        [*ENTRYKIT, "plan", "--format", "json"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    waiting = subprocess.run(
        [*ENTRYKIT, "plan"],
        env={**env, "ENTRYKIT_MIGRATE": "wait"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert "migrate: wait until flask db check exits 0" in waiting.stdout
    commands = json.loads(as_json.stdout)["commands"]
    assert [(c["name"], c["once"], c["env"]) for c in commands] == [
        ("initial-data", True, ["SEED_TOKEN"]),
        ("python", False, []),
    ]
