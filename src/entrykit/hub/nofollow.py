"""Writing into the cache without following a symlink entrykit did not make.

The cache is a shared volume: a symlink already inside it (put there by another image, a
careless script or an attacker) must not make prefetch write outside it. Every folder
entrykit creates or writes into under a repo's folder (and under ``.locks``) is checked not
to be a symlink, and every file it opens for writing is opened with ``O_NOFOLLOW``. The
snapshot's own relative links to ``../../blobs`` are entrykit's (and huggingface_hub's) and
are never written through.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from pathlib import Path

from entrykit.errors import PrefetchFailed


class LinkedPath(PrefetchFailed):
    """A symlink where prefetch would write: it is not followed."""


def refuse_link(path: Path) -> LinkedPath:
    return LinkedPath(
        f"{path} is a symlink, and prefetch writes nothing through a link it did not make: "
        "remove it (or point HF_HUB_CACHE at the folder itself)"
    )


class FolderMaker:
    """Makes folders under one base folder, each checked not to be a symlink; a folder
    checked once is not checked again (thousands of files share a few folders)."""

    def __init__(self) -> None:
        self._checked: set[Path] = set()
        self._lock = threading.Lock()

    def make(self, base: Path, *parts: str) -> Path:
        """``base/parts...``, every part made if missing. ``base`` itself may be a link (a
        cache on a mounted volume). Raises LinkedPath for a part that is a symlink,
        PrefetchFailed for one that is not a folder."""
        with self._lock:
            known = base in self._checked
        if not known:
            base.mkdir(parents=True, exist_ok=True)
            with self._lock:
                self._checked.add(base)
        folder = base
        for part in parts:
            folder = folder / part
            with self._lock:
                if folder in self._checked:
                    continue
            _make_one(folder)
            with self._lock:
                self._checked.add(folder)
        return folder


def _make_one(folder: Path) -> None:
    try:  # looked at first: a complete cache on a read-only volume needs no mkdir
        mode = os.lstat(folder).st_mode
    except FileNotFoundError:
        try:
            os.mkdir(folder)
            return
        except FileExistsError:  # made by another process just now
            mode = os.lstat(folder).st_mode
    if stat.S_ISLNK(mode):
        raise refuse_link(folder)
    if not stat.S_ISDIR(mode):
        raise PrefetchFailed(f"{folder} is a file where prefetch needs a folder: remove it")


def open_no_follow(path: Path, flags: int) -> int:
    """``os.open(path, flags)`` that refuses a symlink at ``path`` (LinkedPath)."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise refuse_link(path) from None
        raise


def is_regular_file(path: Path, size: int | None = None) -> bool:
    """``path`` is a regular file itself (not a link to one), of ``size`` bytes if given."""
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and (size is None or info.st_size == size)


def remove_if_link(path: Path) -> bool:
    """Remove ``path`` if it is a symlink (where a file of ours belongs); True if it was."""
    try:
        if stat.S_ISLNK(os.lstat(path).st_mode):
            os.unlink(path)
            return True
    except FileNotFoundError:
        pass
    return False
