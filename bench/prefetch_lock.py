"""Loading a prefetch lock file: every field checked (entrykit) against reading it unchecked.

    python bench/prefetch_lock.py [--runs 5] [--files 2000,20000,100000]

A lock file is read at every warm start before anything else, so its check is paid by every
container start that uses one. One dataset entry with FILES files (paths two folders deep),
written to a temporary file, then read, median of RUNS runs each:

- entrykit: ``entrykit.hub.lockfile.read_lock`` (JSON, then every repo id, revision, commit,
  path, size and blob id checked, and the file/folder clash check);
- unchecked: ``json.loads`` and one ``RepoFile`` per file, what the loader did before the
  checks; the floor.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from entrykit.hub.files import RepoFile
from entrykit.hub.lockfile import read_lock


def _write(folder: Path, count: int) -> Path:
    files = [
        {
            "path": f"data/shard-{n // 1000:03d}/part-{n:06d}.parquet",
            "size": n,
            "blob_id": hashlib.sha1(str(n).encode()).hexdigest(),
        }
        for n in range(count)
    ]
    entry = {"repo": "acme/eval", "type": "dataset", "revision": "main", "commit": "a" * 40}
    body = {"version": 1, "repos": [{**entry, "include": [], "exclude": [], "files": files}]}
    path = folder / f"lock-{count}.json"
    path.write_text(json.dumps(body))
    return path


def _unchecked(path: Path) -> list[RepoFile]:
    data = json.loads(path.read_text("utf-8"))
    return [
        RepoFile(str(f["path"]), int(f["size"]), str(f["blob_id"]), f.get("sha256"))
        for repo in data["repos"]
        for f in repo["files"]
    ]


def _median_ms(task: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        task()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--files", default="2000,20000,100000")
    args = parser.parse_args()
    print(f"lock file load, median of {args.runs} runs\n")
    print("| files | entrykit (checked) ms | unchecked ms | checked / unchecked |")
    print("|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="bench-lock-") as folder:
        for count in (int(n) for n in args.files.split(",")):
            path = _write(Path(folder), count)
            ours = _median_ms(partial(read_lock, path), args.runs)
            floor = _median_ms(partial(_unchecked, path), args.runs)
            print(f"| {count:,} | {ours:.1f} | {floor:.1f} | {ours / floor:.2f}x |")


if __name__ == "__main__":
    main()
