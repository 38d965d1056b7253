"""How soon after Redis, RabbitMQ and MariaDB accept a login does the waiting process go on,
and how early does a TCP-only wait say "ready" before a login works?

    python bench/waits.py [--trials 5] [--rabbitmq-trials 3] [--seed 1] [--only redis,mariadb,rabbitmq]

Needs root and Debian's redis-server, rabbitmq-server and mariadb-server (what `.ci/run`
installs); a server that is missing is skipped. Each trial starts, side by side,
`entrykit wait URL` (a real login), `entrykit wait tcp://HOST:PORT` (what wait-for-it checks)
and the vendor CLI in a once-a-second shell loop (`redis-cli ping`, `mysqladmin ping`,
`rabbitmq-diagnostics ping`), then starts the server a random 1-3 s after both entrykit waiters logged their first failure. A probe
thread logs in every 10 ms with a Python client; its first success is "the server accepts a
login" (for Redis, or its own "Ready to accept connections" log line when that comes
first: a probe queued behind the loading sees it late). The latency of a waiter is the time from that moment to the waiter's exit; a negative
one means the waiter went on before a login worked. The Redis trials after the first restart
the server with a dataset to load (20 000 keys, at least 2 s of LOADING), as after a crash
or a deploy: TCP accepts at once, PING answers LOADING meanwhile.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from servers import MariaDBServer, RabbitMQServer, RedisServer, amqp_login, which

ENTRYKIT = [sys.executable, "-m", "entrykit"]


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[index]


def _redis_login(server: RedisServer) -> Callable[[], bool]:
    import redis

    def probe() -> bool:
        client = redis.Redis(
            host=server.host,
            port=server.port,
            password=server.password,
            socket_timeout=1,
            protocol=2,
        )
        try:
            return client.ping() is True
        except redis.RedisError:
            return False
        finally:
            client.close()

    return probe


def _mariadb_login(server: MariaDBServer) -> Callable[[], bool]:
    import pymysql

    def probe() -> bool:
        try:
            pymysql.connect(
                host=server.host,
                port=server.port,
                user=server.user,
                password=server.password,
                database=server.database,
                connect_timeout=1,
            ).close()
        except pymysql.MySQLError:
            return False
        return True

    return probe


def _rabbitmq_login(server: RabbitMQServer) -> Callable[[], bool]:
    def probe() -> bool:
        try:
            amqp_login(server.host, server.port, server.user, server.password, server.vhost, 1)
        except Exception:
            return False
        return True

    return probe


def _redis_ready_time(server: RedisServer) -> float:
    """When Redis logged "Ready to accept connections" last (after loading its dataset), as a
    time.monotonic() value: a probe that happens to be queued behind the loading sees it late.
    """
    from datetime import datetime

    lines = [ln for ln in server.log_tail(200).splitlines() if "Ready to accept connections" in ln]
    stamp = " ".join(lines[-1].split()[1:5])  # 26 Nov 2026 20:30:17.631
    wall = datetime.strptime(stamp, "%d %b %Y %H:%M:%S.%f").timestamp()
    return wall - (time.time() - time.monotonic())


def _vendor_loop(kind: str, server: Any) -> tuple[list[str], dict[str, str]]:
    """The once-a-second shell loop with the vendor's CLI, and the environment it needs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENTRYKIT_")}
    if kind == "redis":
        env["REDISCLI_AUTH"] = server.password
        check = f'[ "$({which("redis-cli")} -h {server.host} -p {server.port} ping)" = PONG ]'
    elif kind == "mariadb":
        env["MYSQL_PWD"] = server.password
        check = (
            f"{which('mysqladmin')} --no-defaults --protocol=TCP -h {server.host} "
            f"-P {server.port} -u {server.user} ping >/dev/null 2>&1"
        )
    else:
        env = server._env()  # the node's cookie, epmd port and name (tests/servers.py)
        check = f"{server._bin('rabbitmq-diagnostics')} -n {server.node} -q ping >/dev/null 2>&1"
    return ["sh", "-c", f"until {check}; do sleep 1; done"], env


def _trial(
    kind: str, server: Any, probe: Callable[[], bool], delay: float, load: float
) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENTRYKIT_")}
    env.pop("DATABASE_URL", None)
    loop, loop_env = _vendor_loop(kind, server)
    commands = {
        "entrykit wait URL": ([*ENTRYKIT, "wait", server.url(), "--timeout", "180"], env),
        "entrykit wait tcp://": (
            [*ENTRYKIT, "wait", f"tcp://{server.host}:{server.port}", "--timeout", "180"],
            env,
        ),
        "vendor CLI, once a second": (loop, loop_env),
    }
    exits: dict[str, float] = {}
    waiting = {name: threading.Event() for name in commands}
    procs = {
        name: subprocess.Popen(
            cmd, env=cmd_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        for name, (cmd, cmd_env) in commands.items()
    }

    def watch(name: str, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:  # entrykit's log; the shell loop writes nothing
            if "waiting for" in line:
                waiting[name].set()
        proc.wait()
        exits[name] = time.monotonic()

    watchers = [threading.Thread(target=watch, args=item, daemon=True) for item in procs.items()]
    for watcher in watchers:
        watcher.start()
    # Python's start-up on a loaded machine can take longer than the delay: the server starts
    # only once both entrykit waiters have tried and failed once.
    for name in ("entrykit wait URL", "entrykit wait tcp://"):
        waiting[name].wait(60)
    time.sleep(delay)
    if kind == "redis":
        server.start(wait=False, load_seconds=load)
    else:
        server.start(wait=False)
    while not probe():
        time.sleep(0.01)
    login_ok = time.monotonic()
    if kind == "redis":
        login_ok = min(login_ok, _redis_ready_time(server))
    for watcher in watchers:
        watcher.join(240)
    for name, proc in procs.items():
        if proc.returncode != 0:
            raise RuntimeError(f"{kind}: {name} exited {proc.returncode}")
    return {name: exits[name] - login_ok for name in procs}


def _run_kind(kind: str, trials: int, rng: random.Random) -> dict[str, list[float]]:
    server: Any = {"redis": RedisServer, "mariadb": MariaDBServer, "rabbitmq": RabbitMQServer}[
        kind
    ]()
    probe = {"redis": _redis_login, "mariadb": _mariadb_login, "rabbitmq": _rabbitmq_login}[kind](
        server
    )
    results: dict[str, list[float]] = {}
    try:
        if kind == "redis":  # a dataset that the later starts load (LOADING meanwhile)
            server.start()
            server.populate(20000)
            server.stop()
        for trial in range(trials):
            delay = rng.uniform(1.0, 3.0)
            load = 2.0 if kind == "redis" and trial > 0 else 0.0
            latencies = _trial(kind, server, probe, delay, load)
            for name, latency in latencies.items():
                results.setdefault(name, []).append(latency)
            shown = ", ".join(f"{name} {value:+.3f} s" for name, value in latencies.items())
            print(
                f"{kind} trial {trial + 1}: delay {delay:.2f} s, load {load:.0f} s: {shown}",
                file=sys.stderr,
            )
            server.stop()
    finally:
        server.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--rabbitmq-trials", type=int, default=3)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--only", default="redis,mariadb,rabbitmq")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    available = {
        "redis": RedisServer.available(),
        "mariadb": MariaDBServer.available(),
        "rabbitmq": RabbitMQServer.available(),
    }
    print(
        "\nseconds from the server accepting a login to the waiter's exit "
        "(negative: it went on before a login worked)\n"
    )
    print("| server | waiter | trials | median | p95 | min | median vs entrykit |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for kind in args.only.split(","):
        if not available[kind]:
            print(f"| {kind} | not installed: skipped | | | | | |")
            continue
        trials = args.rabbitmq_trials if kind == "rabbitmq" else args.trials
        results = _run_kind(kind, trials, rng)
        base = statistics.median(results["entrykit wait URL"])
        for name, values in results.items():
            median = statistics.median(values)
            ratio = f"{median / base:.1f}x" if base > 0 and median > 0 else "n/a"
            print(
                f"| {kind} | {name} | {len(values)} | {statistics.median(values):+.3f} s"
                f" | {_percentile(values, 0.95):+.3f} s | {min(values):+.3f} s | {ratio} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
