"""Cold start to the app's exec: a seed-style entrypoint script vs `entrykit run`.

    python bench/coldstart.py [--trials 5]

Each trial gets a fresh database (the example app's Alembic revisions to apply) and an
empty Hugging Face cache (a ~200 MB model on the local Hub, 30 ms added to every request,
50 MB/s per connection). The seed-style script is the hand-written entrypoint it replaces: a wait loop,
`alembic upgrade head`, a prefetch script calling `snapshot_download`, each its own process,
one after another, then exec. The clock stops when the app (`date +%s.%N`) starts.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from hub_fixtures import LocalHub, generated_bytes  # noqa: E402
from postgres_fixtures import PostgresServer  # noqa: E402

ALEMBIC_INI = ROOT / "examples" / "fastapi-app" / "alembic.ini"
BIN = Path(sys.executable).parent
MODEL = "acme/encoder-200mb"

SEED_SCRIPT = """#!/bin/sh
set -e
echo "waiting for the database..."
until python -c "import os, psycopg; psycopg.connect(os.environ['DATABASE_URL'], connect_timeout=5).close()" 2>/dev/null; do
  sleep 1
done
alembic -c "$ALEMBIC_CONFIG" upgrade head
python "$(dirname "$0")/prefetch_models.py"
exec "$@"
"""

SEED_PREFETCH = """
import os
from huggingface_hub import snapshot_download

for repo in filter(None, os.environ.get("HF_MODEL_REPOS", "").split(",")):
    path = snapshot_download(repo_id=repo.strip(), revision=os.environ.get("HF_REVISION") or None)
    print(f"prefetched {repo} into {path}")
"""


def _model_files() -> dict[str, bytes]:
    return {
        "config.json": b'{"hidden_size": 384}',
        "tokenizer.json": generated_bytes(2_000_000, seed=1),
        "model-00001-of-00002.safetensors": generated_bytes(100_000_000, seed=2),
        "model-00002-of-00002.safetensors": generated_bytes(96_000_000, seed=3),
        "README.md": b"# encoder\n",
    }


def _app_started_at(stdout: str) -> float:
    return float(stdout.strip().splitlines()[-1])


def _trial(command: list[str], env: dict[str, str]) -> float:
    started = time.time()
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{command[0]} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return _app_started_at(result.stdout) - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=5)
    trials = parser.parse_args().trials

    work = Path(tempfile.mkdtemp(prefix="entrykit-coldstart-"))
    (work / "seed").mkdir()
    (work / "seed" / "entrypoint.sh").write_text(SEED_SCRIPT)
    (work / "seed" / "entrypoint.sh").chmod(0o755)
    (work / "seed" / "prefetch_models.py").write_text(SEED_PREFETCH)
    server = PostgresServer().start()
    hub = LocalHub(latency=0.03, bandwidth=50_000_000).start()
    try:
        hub.add_repo(MODEL, _model_files())
        size = sum(len(data) for data in _model_files().values())
        base = {
            "PATH": f"{BIN}:{os.environ['PATH']}",
            "HOME": str(work),
            "LANG": "C.UTF-8",
            "ENTRYKIT_SECRETS_DIR": str(work / "no-secrets"),
        }
        app = ["date", "+%s.%N"]
        results: dict[str, list[float]] = {"seed-style script": [], "entrykit run": []}
        for trial in range(trials):
            for name in (list(results) if trial % 2 == 0 else list(reversed(results))):
                database = server.url(dbname=server.create_database())
                cache = work / f"hf-{name.split()[0]}-{trial}"
                env = hub.env(cache, base=base, DATABASE_URL=database)
                if name == "entrykit run":
                    env |= {
                        "ENTRYKIT_MIGRATE": "1",
                        "ENTRYKIT_ALEMBIC_CONFIG": str(ALEMBIC_INI),
                        "ENTRYKIT_HF_MODELS": MODEL,
                    }
                    command = [str(BIN / "entrykit"), *app]
                else:
                    env |= {"ALEMBIC_CONFIG": str(ALEMBIC_INI), "HF_MODEL_REPOS": MODEL}
                    command = [str(work / "seed" / "entrypoint.sh"), *app]
                results[name].append(_trial(command, env))
                shutil.rmtree(cache, ignore_errors=True)
    finally:
        hub.stop()
        server.close()
        shutil.rmtree(work, ignore_errors=True)

    seed = statistics.median(results["seed-style script"])
    revisions = len(list((ALEMBIC_INI.parent / "migrations" / "versions").glob("0*.py")))
    print(
        f"cold start to the app's exec, median of {trials}: fresh database ({revisions} "
        "revisions), "
        f"empty cache ({size / 1e6:.0f} MB model, 30 ms per request, 50 MB/s per connection)\n"
    )
    print("| entrypoint | median s | min s | max s | speed-up vs seed script |")
    print("|---|---:|---:|---:|---:|")
    for name, seconds in results.items():
        median = statistics.median(seconds)
        print(
            f"| {name} | {median:.2f} | {min(seconds):.2f} | {max(seconds):.2f} | "
            f"{seed / median:.2f}x |"
        )


if __name__ == "__main__":
    main()
