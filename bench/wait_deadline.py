"""Does a wait end at its deadline whatever the dependency does?

    python bench/wait_deadline.py [--timeout 2] [--trials 3] [--cap 15]

Each case is a real socket on 127.0.0.1: a port nothing listens on, and servers that
trickle one byte every half second after ``HTTP/1.1 200 OK\\r\\nX-Slow: `` or ``+PONG``
(every read is quick, so a socket timeout never fires). For each, ``entrykit wait URL
--timeout T`` is timed against the shell loop an entrypoint script would use, with the same
deadline checked between tries (``curl --max-time 1`` for HTTP, ``redis-cli ping`` for
Redis); a run still going at ``--cap`` seconds is killed and shown as ``>CAP``. Also timed:
``entrykit wait`` with 300 Redis URLs (nothing listening), where preparing the checks
takes a while. The table shows the median seconds to exit and the overshoot past T.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time

ENTRYKIT = [sys.executable, "-m", "entrykit"]


def _trickle(start: bytes) -> int:
    server = socket.create_server(("127.0.0.1", 0))

    def serve(client: socket.socket) -> None:
        with client:
            try:
                client.settimeout(0.2)
                with contextlib.suppress(TimeoutError):
                    client.recv(65536)
                client.sendall(start)
                while True:
                    client.sendall(b"a")
                    time.sleep(0.5)
            except OSError:
                return

    def accept() -> None:
        while True:
            client, _ = server.accept()
            threading.Thread(target=serve, args=(client,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return int(server.getsockname()[1])


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _timed(command: list[str], cap: float, env: dict[str, str] | None = None) -> float:
    started = time.monotonic()
    try:
        subprocess.run(command, capture_output=True, timeout=cap, check=False, env=env)
    except subprocess.TimeoutExpired:
        return float("inf")
    return time.monotonic() - started


def _shell_loop(probe: str, timeout: float) -> list[str]:
    # the loop of a hand-written entrypoint, its deadline checked between tries
    script = (
        f"end=$(( $(date +%s%N) + {int(timeout * 1e9)} )); until {probe}; do "
        '[ "$(date +%s%N)" -ge "$end" ] && exit 1; sleep 0.5; done'
    )
    return ["sh", "-c", script]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--cap", type=float, default=15.0)
    args = parser.parse_args()
    t = args.timeout
    http, redis, closed = (
        _trickle(b"HTTP/1.1 200 OK\r\nX-Slow: "),
        _trickle(b"+PONG"),
        _closed_port(),
    )
    many = ",".join(f"redis://127.0.0.1:{closed}/{db}" for db in range(300))
    curl = "curl -s -o /dev/null --max-time 1"
    cases: list[tuple[str, list[str], list[str] | None]] = [
        (
            "http, nothing listening",
            ["wait", f"http://127.0.0.1:{closed}/"],
            _shell_loop(f"{curl} http://127.0.0.1:{closed}/", t),
        ),
        (
            "http, trickling",
            ["wait", f"http://127.0.0.1:{http}/"],
            _shell_loop(f"{curl} http://127.0.0.1:{http}/", t),
        ),
        (
            "redis, trickling",
            ["wait", f"redis://127.0.0.1:{redis}/0"],
            _shell_loop(f"redis-cli -p {redis} ping", t) if shutil.which("redis-cli") else None,
        ),
        ("amqp, trickling", ["wait", f"amqp://127.0.0.1:{redis}/"], None),
        ("300 redis URLs, refused", ["wait", *many.split(",")], None),
    ]
    print(f"seconds to exit with a deadline of {t:g} s (median of {args.trials}; >CAP: killed)")
    print(f"{'case':28} {'entrykit':>9} {'over':>6} {'shell loop':>11} {'over':>6} {'ratio':>6}")
    for name, entrykit_args, loop in cases:
        ours = statistics.median(
            _timed([*ENTRYKIT, *entrykit_args, "--timeout", str(t)], args.cap)
            for _ in range(args.trials)
        )
        theirs = (
            statistics.median(_timed(loop, args.cap) for _ in range(args.trials)) if loop else None
        )

        def shown(seconds: float | None) -> str:
            if seconds is None:
                return "-"
            return f">{args.cap:g}" if seconds == float("inf") else f"{seconds:.2f}"

        def over(seconds: float | None) -> str:
            return "-" if seconds is None or seconds == float("inf") else f"{seconds - t:+.2f}"

        finite = theirs is not None and max(ours, theirs) != float("inf")
        ratio = f"{theirs / ours:.1f}x" if finite and theirs is not None else "-"
        print(
            f"{name:28} {shown(ours):>9} {over(ours):>6} {shown(theirs):>11} "
            f"{over(theirs):>6} {ratio:>6}"
        )


if __name__ == "__main__":
    main()
