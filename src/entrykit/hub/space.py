"""Phase 2 of a prefetch: the bytes still to write against the free space of each file system
they go to: the cache's, and each local dir's when it is on another one (its files are then
copies, not hard links). Not enough is NotEnoughDiskSpace (exit 41) before a byte is fetched.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from entrykit.errors import NotEnoughDiskSpace
from entrykit.hub.planning import RepoPlan, file_size
from entrykit.hub.progress import human_bytes


def check_disk_space(plans: Sequence[RepoPlan], *, offline: bool) -> None:
    """Raises NotEnoughDiskSpace when a file system lacks room for what this run writes
    there: the missing blobs (unless ``offline``), and the files to copy into local dirs."""
    if not plans:
        return
    cache_dir = plans[0].cache.cache_dir
    needs: dict[int, tuple[int, Path]] = {}  # device -> (bytes, a folder on it)

    def need(folder: Path, count: int) -> None:
        device = os.stat(_existing(folder)).st_dev
        before, first = needs.get(device, (0, folder))
        needs[device] = (before + count, first)

    if not offline:
        need(cache_dir, _missing_blob_bytes(plans))
    cache_device = os.stat(_existing(cache_dir)).st_dev
    for plan in plans:
        if plan.local_dir is not None:
            copies = os.stat(_existing(plan.local_dir)).st_dev != cache_device
            need(plan.local_dir, _bytes_to_place(plan) if copies else 0)
    for needed, folder in needs.values():
        free = shutil.disk_usage(_existing(folder)).free
        if needed > free:
            raise NotEnoughDiskSpace(
                f"prefetch needs {human_bytes(needed)} more in {folder}, but its file system "
                f"has {human_bytes(free)} free: give that volume more space"
            )


def _missing_blob_bytes(plans: Sequence[RepoPlan]) -> int:
    needed = 0
    seen: set[Path] = set()
    for plan in plans:
        for file in plan.missing:
            blob = plan.cache.blob(file)
            if blob in seen or plan.cache.has_blob(file):
                continue
            seen.add(blob)
            needed += file.size - plan.cache.partial_bytes(file)
    return needed


def _bytes_to_place(plan: RepoPlan) -> int:
    """Bytes of the files not yet in the local dir at their size (a stat per file)."""
    assert plan.local_dir is not None
    return sum(
        file.size
        for file in plan.files
        if file_size(plan.local_dir / Path(*file.path.split("/"))) != file.size
    )


def _existing(folder: Path) -> Path:
    """``folder``, or its nearest parent that exists (a folder not made yet)."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder
