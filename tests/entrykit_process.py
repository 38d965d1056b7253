"""Run entrykit as a real process, the way a container runtime does."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

ENTRYKIT = [sys.executable, "-m", "entrykit"]


def clean_env(secrets_dir: Path | str | None = None, **extra: str) -> dict[str, str]:
    """A minimal environment: nothing of the developer's ENTRYKIT_*, HF_* or DATABASE_URL."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    if secrets_dir is not None:
        env["ENTRYKIT_SECRETS_DIR"] = str(secrets_dir)
    env.update(extra)
    return env


def run_entrykit(
    args: Sequence[str],
    env: Mapping[str, str],
    *,
    cwd: Path | str | None = None,
    timeout: float = 60,
    prefix: Sequence[str] = (),
    **kwargs: object,
) -> subprocess.CompletedProcess[str]:
    """``entrykit ARGS`` to completion (after ``prefix``, e.g. ``unshare``), capturing text."""
    return subprocess.run(
        [*prefix, *ENTRYKIT, *args],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kwargs,  # type: ignore[arg-type]
    )
