"""Shared pieces of the prefetch tests: repos on the local Hub, settings, CLI runs, checks."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from entrykit_process import clean_env, run_entrykit
from hub_fixtures import LocalHub, generated_bytes, hub_env

from entrykit.hub.access import HubAccess
from entrykit.hub.retry import RetryPolicy
from entrykit.settings import Settings

# Fast retries for in-process tests; the defaults are for real networks.
FAST = RetryPolicy(
    connect_timeout=2, read_timeout=2, base_delay=0.05, max_delay=0.5, give_up_after=10
)

MODEL = "acme/encoder"
DATASET = "acme/eval-set"


def add_model(
    hub: LocalHub, repo_id: str = MODEL, *, big: int = 3_000_000, **kwargs: object
) -> str:
    """A model repo: two small git files, a folder, one LFS weight file, one file to exclude."""
    files = {
        "config.json": b'{"hidden_size": 8}\n',
        "tokenizer/vocab.txt": b"\n".join(b"tok%d" % i for i in range(500)),
        "model.safetensors": generated_bytes(big, seed=1),
        "pytorch_model.bin": generated_bytes(1_500_000, seed=2),
    }
    return hub.add_repo(repo_id, files, **kwargs)  # type: ignore[arg-type]


def add_dataset(hub: LocalHub, repo_id: str = DATASET) -> str:
    files = {
        "README.md": b"# eval set\n",
        "data/train-00000.parquet": generated_bytes(1_200_000, seed=3),
        "data/test-00000.parquet": generated_bytes(300_000, seed=4),
        "extra/notes.txt": b"not wanted\n",
    }
    return hub.add_repo(repo_id, files, repo_type="dataset", lfs={"data/train-00000.parquet"})


def access(hub: LocalHub, home: Path, token: str | None = None) -> HubAccess:
    return HubAccess(endpoint=hub.url, cache_dir=home / "hub", token=token)


def settings(
    *specs: str,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    lockfile: Path | None = None,
    max_workers: int = 8,
) -> Settings:
    options: dict[str, object] = {"hf_models": ",".join(specs), "hf_max_workers": max_workers}
    if include:
        options["hf_include"] = ",".join(include)
    if exclude:
        options["hf_exclude"] = ",".join(exclude)
    if lockfile is not None:
        options["hf_lockfile"] = str(lockfile)
    return Settings.load(options=options, environ={})


def snapshot(home: Path, repo_id: str, commit: str, repo_type: str = "model") -> Path:
    folder = "--".join([f"{repo_type}s", *repo_id.split("/")])
    return home / "hub" / folder / "snapshots" / commit


def snapshot_bytes(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def hub_bytes(
    hub: LocalHub,
    repo_id: str,
    paths: Sequence[str],
    *,
    repo_type: str = "model",
    revision: str = "main",
) -> dict[str, bytes]:
    files = hub.files(repo_id, revision, repo_type=repo_type)
    return {path: files[path].data for path in sorted(paths)}


def leftovers(home: Path) -> list[Path]:
    """Partial or temporary files left in the cache."""
    cache = home / "hub"
    return [
        p
        for p in cache.rglob("*")
        if p.name.endswith((".incomplete", ".incomplete-parts", ".tmp", ".link"))
    ]


def cli_env(hub: LocalHub, home: Path, tmp: Path, **extra: str) -> dict[str, str]:
    secrets = tmp / "secrets"
    secrets.mkdir(exist_ok=True)
    return hub_env(hub, home, base=clean_env(secrets_dir=secrets), **extra)


def prefetch_cli(
    args: Sequence[str], env: Mapping[str, str], *, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return run_entrykit(["prefetch", *args], env, timeout=timeout)


def run_python(
    code: str, *args: str, env: Mapping[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -c CODE ARGS...`` to completion (huggingface_hub reads HF_* at import)."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def kill_9_when(command: Sequence[str], env: Mapping[str, str], ready: Callable[[], bool]) -> None:
    """Start ``command``, SIGKILL it once ``ready()`` holds (within 20 s), reap it."""
    process = subprocess.Popen(
        list(command), env=dict(env), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 20
        while not ready():
            assert time.monotonic() < deadline, "the download never got far enough"
            assert process.poll() is None, "the download ended before it could be killed"
            time.sleep(0.02)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
