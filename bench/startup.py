"""Start-up cost of `entrykit run -- true` against bare Python and a shell exec.

    python bench/startup.py [--runs 40]

Each command runs RUNS times after two warm-up runs; the table gives the median and p90
wall time and the ratio to `python -c pass`. A fourth row imports only the standard-library
modules entrykit's exec path needs (logging, pathlib, signal, threading): the floor. entrykit's modules are byte-compiled first,
as `pip install` does in an image (the dev environment may set PYTHONDONTWRITEBYTECODE).
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import entrykit


def _time_runs(command: list[str], runs: int, env: dict[str, str]) -> list[float]:
    for _ in range(2):
        subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        seconds.append(time.perf_counter() - started)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=40)
    runs = parser.parse_args().runs

    compileall.compile_dir(str(Path(entrykit.__file__).parent), quiet=1)
    entrykit_script = shutil.which("entrykit", path=str(Path(sys.executable).parent)) or "entrykit"
    with tempfile.TemporaryDirectory() as empty:
        # Nothing configured: no secrets folder, no config file, no database, no models.
        env = {"PATH": os.environ["PATH"], "ENTRYKIT_SECRETS_DIR": empty, "HOME": empty}
        commands = {
            "entrykit run -- true": [entrykit_script, "run", "--", "true"],
            "python -c pass": [sys.executable, "-c", "pass"],
            # The standard library the exec path cannot do without: its floor.
            "python -c 'import logging, pathlib, signal, threading'": [
                sys.executable,
                "-c",
                "import logging, pathlib, signal, threading",
            ],
            "sh -c 'exec true'": ["sh", "-c", "exec true"],
        }
        results = {name: _time_runs(cmd, runs, env) for name, cmd in commands.items()}

    baseline = statistics.median(results["python -c pass"])
    print(f"start-up, {runs} runs each, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}\n")
    print("| command | median ms | p90 ms | x python -c pass |")
    print("|---|---:|---:|---:|")
    for name, seconds in results.items():
        median = statistics.median(seconds)
        p90 = statistics.quantiles(seconds, n=10)[-1]
        print(f"| `{name}` | {median * 1000:.1f} | {p90 * 1000:.1f} | {median / baseline:.2f}x |")


if __name__ == "__main__":
    main()
