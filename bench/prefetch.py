"""Benchmark: `entrykit prefetch` against `hf download`, both as real processes.

The local Hub of the tests (tests/hub_fixtures.py) adds 30 ms to every request and caps each
connection at about 50 MB/s. Three repos: one with a file over 100 MB, one with 40 small
files, one dataset of a few mid-sized files.

- cold: an empty cache; entrykit fetches all repos in one run, `hf download` is run per repo
  one after another (what the seed entrypoint scripts do);
- warm by branch: everything cached, specs name the branch `main`; entrykit with its lock
  file, `hf download` per repo as before.

Run: /work/venv/bin/python bench/prefetch.py [--rounds N] [--big-mb N]
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from hub_fixtures import LocalHub, generated_bytes, hub_env

HF = str(Path(sys.executable).with_name("hf"))
REPOS = [
    ("model", "bench/big-model"),
    ("model", "bench/many-files"),
    ("dataset", "bench/eval-data"),
]


def build(hub: LocalHub, big_mb: int) -> int:
    hub.add_repo(
        "bench/big-model",
        {
            "config.json": b'{"hidden_size": 1024}\n',
            "model.safetensors": generated_bytes(big_mb * 1_000_000, seed=1),
        },
    )
    hub.add_repo(
        "bench/many-files",
        {
            f"shard/part-{i:02d}.json": generated_bytes(24_000 + 997 * i, seed=100 + i)
            for i in range(40)
        },
        lfs=set(),
    )
    hub.add_repo(
        "bench/eval-data",
        {f"data/split-{i}.parquet": generated_bytes(6_000_000, seed=200 + i) for i in range(4)},
        repo_type="dataset",
    )
    return sum(
        len(f.data)
        for repo_type, repo_id in REPOS
        for f in hub.files(repo_id, repo_type=repo_type).values()
    )


def timed(commands: list[list[str]], env: dict[str, str]) -> float:
    started = time.perf_counter()
    for command in commands:
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"{command} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return time.perf_counter() - started


def entrykit_command(lock: Path | None) -> list[list[str]]:
    specs = [f"{t}:{r}@main" if t != "model" else f"{r}@main" for t, r in REPOS]
    locking = ["--lock", str(lock)] if lock is not None else []
    return [[sys.executable, "-m", "entrykit", "prefetch", *specs, *locking]]


def hf_commands() -> list[list[str]]:
    return [
        [HF, "download", repo_id, "--repo-type", t, "--revision", "main", "--quiet"]
        for t, repo_id in REPOS
    ]


def same_snapshots(a: Path, b: Path) -> bool:
    def listing(root: Path) -> list[tuple[str, int]]:
        return sorted(
            (p.relative_to(root).as_posix(), p.stat().st_size)
            for p in root.glob("*/snapshots/*/**/*")
            if p.is_file()
        )

    return listing(a / "hub") == listing(b / "hub")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--big-mb", type=int, default=120)
    args = parser.parse_args()

    results: dict[tuple[str, str], list[float]] = {}
    with LocalHub(latency=0.03, bandwidth=50_000_000) as hub:
        total = build(hub, args.big_mb)
        for _ in range(args.rounds):
            work = Path(tempfile.mkdtemp(prefix="bench-prefetch-"))
            try:
                homes = {"entrykit": work / "ek", "hf": work / "hf"}
                envs = {
                    name: hub_env(hub, home, ENTRYKIT_SECRETS_DIR=str(work / "secrets"))
                    for name, home in homes.items()
                }
                lock = work / "models.lock.json"
                runs = {"entrykit": entrykit_command(lock), "hf": hf_commands()}
                for phase in ("cold", "warm"):
                    for name in ("entrykit", "hf"):
                        results.setdefault((phase, name), []).append(timed(runs[name], envs[name]))
                unlocked = timed(entrykit_command(None), envs["entrykit"])
                results.setdefault(("warm-unlocked", "entrykit"), []).append(unlocked)
                if not same_snapshots(homes["entrykit"], homes["hf"]):
                    raise SystemExit("the two caches differ")
            finally:
                shutil.rmtree(work, ignore_errors=True)

    mb = total / 1e6
    print(
        f"Local Hub: 30 ms per request, 50 MB/s per connection; {len(REPOS)} repos, {mb:.0f} MB; "
        f"median of {args.rounds} rounds; {os.cpu_count()} cores\n"
    )
    print("| case | entrykit | hf download | speed-up | entrykit MB/s | hf MB/s |")
    print("|---|---|---|---|---|---|")
    cases = (
        ("cold", "cold cache"),
        ("warm", "warm, by branch (entrykit: lock file)"),
        ("warm-unlocked", "warm, by branch (entrykit: no lock file)"),
    )
    for phase, label in cases:
        ek = statistics.median(results[(phase, "entrykit")])
        hf = statistics.median(results[(phase if phase != "warm-unlocked" else "warm", "hf")])
        rates = (f"{mb / ek:.0f}", f"{mb / hf:.0f}") if phase == "cold" else ("-", "-")
        print(f"| {label} | {ek:.2f} s | {hf:.2f} s | {hf / ek:.1f}x | {rates[0]} | {rates[1]} |")


if __name__ == "__main__":
    main()
