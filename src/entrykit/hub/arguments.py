"""What prefetch is given, checked and made whole: the Python API's checks of what the CLI's
option parsing checks (``entrykit.prefetch``), paths with ``~``, how a setting was given."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from entrykit.settings import Settings


def patterns(name: str, given: str | Sequence[str]) -> tuple[str, ...]:
    """One pattern or several; TypeError for anything else (a str is not split in letters)."""
    if isinstance(given, str):
        return (given,)
    items = tuple(given)
    if not all(isinstance(item, str) for item in items):
        raise TypeError(f"{name}: expected a glob pattern or a list of them, got {given!r}")
    return items


def check_api_arguments(max_workers: object, **paths: str | os.PathLike[str] | None) -> None:
    """The Python API's checks of what the CLI's option parsing checks."""
    if isinstance(max_workers, bool) or not isinstance(max_workers, int):
        raise TypeError(f"max_workers: expected a whole number from 1 to 64, got {max_workers!r}")
    if not 1 <= max_workers <= 64:
        raise ValueError(f"max_workers: expected a whole number from 1 to 64, got {max_workers}")
    for name, path in paths.items():
        if path is not None and not os.fspath(path).strip():
            raise ValueError(f"{name}: an empty path; give a path or leave it out (None)")


def full_path(cwd: Path, path: str | os.PathLike[str] | None) -> Path | None:
    """``path`` with ``~`` expanded (as ``hf download`` does), relative to ``cwd``."""
    return None if path is None else cwd / Path(path).expanduser()


def local_dir_setting(settings: Settings) -> str:
    """How the user gave the local dir, for messages: ``--local-dir (option)``,
    ``ENTRYKIT_HF_LOCAL_DIR (env)`` or ``hf_local_dir (file:entrykit.toml)``."""
    source = settings.sources.get("hf_local_dir", "option")
    names = {"option": "--local-dir", "env": "ENTRYKIT_HF_LOCAL_DIR"}
    return f"{names.get(source, 'hf_local_dir')} ({source})"
