"""Benchmark: `entrykit prefetch` against `hf download`, both as real processes, same run.

The local Hub of the tests (tests/hub_fixtures.py, blobs served with sendfile) on 127.0.0.1.
Cases (``--case``, default all):

- ``big``: one 1 GiB LFS file, cold (empty cache) and warm, unlimited and with a 100 MB/s cap
  per connection (what a CDN does); plus the floor: ``curl -o`` of the same bytes from the
  same server followed by ``sha256sum`` of the file.
- ``many``: a dataset of 2,000 small files (1-8 kB), cold and warm.
- ``mixed``: three repos (a 120 MB weight file, 40 small files, a 24 MB dataset) with 30 ms
  per request and 50 MB/s per connection; ``hf download`` per repo one after another (what
  entrypoint scripts do), entrykit in one run with its lock file when warm.

For each: wall time, requests to the Hub (both origins) and peak RSS of the process tree's
largest process (``ru_maxrss`` of the child). Warm specs name the branch ``main``.

Run: .venv/bin/python bench/prefetch.py [--case big|many|mixed] [--rounds N] [--big-mb N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from hub_fixtures import LocalHub, generated_bytes, hub_env

HF = str(Path(sys.executable).with_name("hf"))
ENTRYKIT = [sys.executable, "-m", "entrykit", "prefetch"]


@dataclass
class Run:
    seconds: float
    requests: int
    rss_mb: float


def measured(hub: LocalHub, commands: Sequence[Sequence[str]], env: dict[str, str]) -> Run:
    """Run ``commands`` one after another; wall time, Hub requests, the largest peak RSS."""
    hub.reset_counts()
    peak = 0
    started = time.perf_counter()
    for command in commands:
        process = subprocess.Popen(
            list(command), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        high_water = _watch_high_water(process.pid)
        _, stderr = process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"{command} failed ({process.returncode}):\n{stderr[-2000:]!r}")
        peak = max(peak, high_water())
    return Run(time.perf_counter() - started, hub.count(), peak / 1024)


def _watch_high_water(pid: int) -> Callable[[], int]:
    """Poll ``VmHWM`` (the peak RSS of the process's own memory, reset by exec, unlike
    ``ru_maxrss``, which a child inherits from this large parent) until the process ends."""
    import threading

    seen = [0]

    def poll() -> None:
        path = Path(f"/proc/{pid}/status")
        while True:
            try:
                lines = path.read_text().splitlines()
            except OSError:
                return
            values = [int(line.split()[1]) for line in lines if line.startswith("VmHWM:")]
            if not values:
                return  # a zombie: it has exited
            seen[0] = max(seen[0], values[0])
            time.sleep(0.01)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()

    def result() -> int:
        thread.join()
        return seen[0]

    return result


@contextmanager
def homes(hub: LocalHub) -> Iterator[tuple[Path, dict[str, str], dict[str, str]]]:
    work = Path(tempfile.mkdtemp(prefix="bench-prefetch-"))
    try:
        (work / "secrets").mkdir()
        ek = hub_env(hub, work / "ek", ENTRYKIT_SECRETS_DIR=str(work / "secrets"))
        hf = hub_env(hub, work / "hf", ENTRYKIT_SECRETS_DIR=str(work / "secrets"))
        yield work, ek, hf
    finally:
        shutil.rmtree(work, ignore_errors=True)


Row = tuple[str, Run, Run]


def compare(
    hub: LocalHub, label: str, ek: list[list[str]], hf: list[list[str]], rounds: int
) -> list[Row]:
    """Cold then warm, ``rounds`` times, fresh caches each round; medians by wall time."""
    results: dict[tuple[str, str], list[Run]] = {}
    for _ in range(rounds):
        with homes(hub) as (_, ek_env, hf_env):
            for phase in ("cold", "warm"):
                results.setdefault((phase, "ek"), []).append(measured(hub, ek, ek_env))
                results.setdefault((phase, "hf"), []).append(measured(hub, hf, hf_env))
    rows = []
    for phase in ("cold", "warm"):
        ek_runs = sorted(results[(phase, "ek")], key=lambda r: r.seconds)
        hf_runs = sorted(results[(phase, "hf")], key=lambda r: r.seconds)
        rows.append((f"{label}, {phase}", ek_runs[len(ek_runs) // 2], hf_runs[len(hf_runs) // 2]))
    return rows


def floor(hub: LocalHub, sha256: str, rounds: int) -> float:
    """``curl -o`` of the blob from the CDN origin, then ``sha256sum``: the cost of the bytes."""
    times = []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory(prefix="bench-floor-") as folder:
            target = Path(folder) / "blob"
            started = time.perf_counter()
            subprocess.run(
                ["curl", "-sS", "-o", str(target), f"{hub.cdn_url}/lfs/{sha256}"], check=True
            )
            digest = subprocess.run(
                ["sha256sum", str(target)], check=True, capture_output=True, text=True
            ).stdout.split()[0]
            times.append(time.perf_counter() - started)
            assert digest == sha256
    return statistics.median(times)


def big_case(rounds: int, big_mb: int) -> tuple[list[Row], list[str]]:
    rows: list[Row] = []
    notes = []
    with LocalHub() as hub:
        hub.add_repo("bench/one-gib", {"model.safetensors": generated_bytes(big_mb << 20, seed=1)})
        file = hub.files("bench/one-gib")["model.safetensors"]
        hub.blob_path(file)  # written once, before anything is timed
        ek = [[*ENTRYKIT, "bench/one-gib"]]
        hf = [[HF, "download", "bench/one-gib", "--quiet"]]
        rows += compare(hub, f"{big_mb} MiB file", ek, hf, rounds)
        assert file.sha256 is not None
        bottom = floor(hub, file.sha256, rounds)
        notes.append(
            f"Floor for the {big_mb} MiB file, `curl -o` + `sha256sum`: {bottom:.2f} s; "
            f"entrykit cold takes {rows[0][1].seconds / bottom:.2f}x that, hf download "
            f"{rows[0][2].seconds / bottom:.2f}x."
        )
        hub.bandwidth = 100_000_000
        rows += compare(hub, f"{big_mb} MiB file, 100 MB/s per connection", ek, hf, rounds)
    return rows, notes


def many_case(rounds: int) -> tuple[list[Row], list[str]]:
    with LocalHub() as hub:
        files = {
            f"data/{i // 100:02d}/row-{i:04d}.json": generated_bytes(1000 + (i * 37) % 7000, i)
            for i in range(2000)
        }
        hub.add_repo("bench/many", files, repo_type="dataset", lfs=set())
        ek = [[*ENTRYKIT, "dataset:bench/many"]]
        hf = [[HF, "download", "bench/many", "--repo-type", "dataset", "--quiet"]]
        return compare(hub, "2,000-file dataset", ek, hf, rounds), []


MIXED = [("model", "bench/big-model"), ("model", "bench/many-files"), ("dataset", "bench/eval")]


def mixed_case(rounds: int) -> tuple[list[Row], list[str]]:
    with LocalHub(latency=0.03, bandwidth=50_000_000) as hub:
        hub.add_repo(
            "bench/big-model",
            {"config.json": b"{}\n", "model.safetensors": generated_bytes(120_000_000, 1)},
        )
        hub.add_repo(
            "bench/many-files",
            {
                f"shard/part-{i:02d}.json": generated_bytes(24_000 + 997 * i, 100 + i)
                for i in range(40)
            },
            lfs=set(),
        )
        hub.add_repo(
            "bench/eval",
            {f"data/split-{i}.parquet": generated_bytes(6_000_000, 200 + i) for i in range(4)},
            repo_type="dataset",
        )
        specs = [f"{t}:{r}@main" if t != "model" else f"{r}@main" for t, r in MIXED]
        with tempfile.TemporaryDirectory(prefix="bench-lock-") as folder:
            lock = str(Path(folder) / "models.lock.json")
            ek = [[*ENTRYKIT, *specs, "--lock", lock]]
            hf = [
                [HF, "download", r, "--repo-type", t, "--revision", "main", "--quiet"]
                for t, r in MIXED
            ]
            rows = compare(hub, "3 repos, 30 ms, 50 MB/s per connection", ek, hf, rounds)
    return rows, []


CASES: dict[str, Callable[[argparse.Namespace], tuple[list[Row], list[str]]]] = {
    "big": lambda args: big_case(args.rounds, args.big_mb),
    "many": lambda args: many_case(args.rounds),
    "mixed": lambda args: mixed_case(args.rounds),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--case", choices=sorted(CASES), action="append")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--big-mb", type=int, default=1024, help="MiB of the large file")
    args = parser.parse_args()

    rows: list[Row] = []
    notes: list[str] = []
    for name in args.case or ["big", "many", "mixed"]:
        case_rows, case_notes = CASES[name](args)
        rows += case_rows
        notes += case_notes

    print(f"Median of {args.rounds} rounds; {os.cpu_count()} cores; peak RSS of the process\n")
    print(
        "| case | entrykit | hf download | speed-up | requests (ek / hf) | peak RSS MiB (ek / hf) |"
    )
    print("|---|---|---|---|---|---|")
    for label, ek, hf in rows:
        print(
            f"| {label} | {ek.seconds:.2f} s | {hf.seconds:.2f} s | {hf.seconds / ek.seconds:.1f}x "
            f"| {ek.requests} / {hf.requests} | {ek.rss_mb:.0f} / {hf.rss_mb:.0f} |"
        )
    for note in notes:
        print(f"\n{note}")


if __name__ == "__main__":
    main()
