"""What prefetch is given, checked and made whole: the Python API's checks of what the CLI's
option parsing checks (``entrykit.prefetch``), paths with ``~``, how a setting was given."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from entrykit.errors import ConfigError

if TYPE_CHECKING:
    from entrykit.settings import Settings
    from entrykit.specs import ModelSpec


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
    return None if path is None else cwd / os.path.expanduser(path)  # ~user unknown: as is


def local_dir_setting(settings: Settings) -> str:
    """How the user gave the local dir, for messages: ``--local-dir (option)``,
    ``ENTRYKIT_HF_LOCAL_DIR (env)`` or ``hf_local_dir (file:entrykit.toml)``."""
    source = settings.sources.get("hf_local_dir", "option")
    names = {"option": "--local-dir", "env": "ENTRYKIT_HF_LOCAL_DIR"}
    return f"{names.get(source, 'hf_local_dir')} ({source})"


def check_local_dirs(specs: Sequence[ModelSpec]) -> None:
    """ConfigError when two repos would place their files in one folder (or one inside the
    other): their files would overwrite each other. Reads nothing on disk (``plan`` and
    ``run`` call it before any step): paths are compared as written, ``~`` expanded."""
    seen: list[tuple[Path, ModelSpec]] = []
    for spec in specs:
        if spec.local_dir is None:
            continue
        folder = Path(os.path.abspath(os.path.expanduser(spec.local_dir)))  # normalised, no I/O
        for other_folder, other in seen:
            if (
                folder == other_folder
                or other_folder in folder.parents
                or (folder in other_folder.parents)
            ):
                raise ConfigError(
                    f"local_dir: {spec} ({spec.local_dir}) and {other} ({other.local_dir}) "
                    "share a folder, and their files would overwrite each other: give each "
                    "repo a folder of its own"
                )
        seen.append((folder, spec))
