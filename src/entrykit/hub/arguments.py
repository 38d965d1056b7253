"""The Python API's checks of what the CLI's option parsing checks (``entrykit.prefetch``)."""

from __future__ import annotations

import os
from collections.abc import Sequence


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
