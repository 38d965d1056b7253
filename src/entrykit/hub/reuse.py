"""Files an ``hf download --local-dir DIR`` already left in the local dir, taken into the cache
instead of downloading them again.

huggingface_hub records each file it placed in ``DIR/.cache/huggingface/download/<path>.metadata``
(the commit, the etag, the time). A file whose record names the wanted commit or etag and
whose size is right becomes the blob: a hard link when both are on one file system, else a
copy, and its bytes are hashed (sha256 for LFS files, the git blob sha1 for the others)
before the cache takes it. A file that does not hash right is downloaded, and placed again.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from entrykit.hub.files import FileHasher, RepoFile
from entrykit.hub.nofollow import is_regular_file
from entrykit.hub.planning import RepoPlan

logger = logging.getLogger("entrykit.prefetch")

_MAX_METADATA = 4096  # commit, etag, time: a few lines


def take_from_local_dirs(
    members: list[tuple[RepoPlan, RepoFile]], partial: Path
) -> RepoPlan | None:
    """The first of the repos sharing a blob whose local dir could fill ``partial``, having
    filled it (see `take_from_local_dir`); None when none could."""
    for plan, file in members:
        if take_from_local_dir(plan, file, partial):
            return plan
    return None


def take_from_local_dir(plan: RepoPlan, file: RepoFile, partial: Path) -> bool:
    """Fill ``partial`` (a partial file of the cache, under the blob lock) from ``plan``'s
    local dir if it holds ``file`` as recorded by huggingface_hub and its bytes hash right.
    Returns False, leaving no ``partial``, when it does not. Raises OSError from the disk."""
    if plan.local_dir is None:
        return False
    relative = Path(*file.path.split("/"))
    source = plan.local_dir / relative
    if not _recorded(plan, file, plan.local_dir / ".cache/huggingface/download", relative):
        return False
    if not is_regular_file(source, file.size):
        return False
    partial.unlink(missing_ok=True)
    partial.with_name(partial.name + "-parts").unlink(missing_ok=True)
    try:
        os.link(source, partial, follow_symlinks=False)  # the same inode: no space, no copy
    except OSError:
        shutil.copyfile(source, partial, follow_symlinks=False)
    hasher = FileHasher(file)
    hasher.update_from(partial, file.size)
    if hasher.matches() and partial.stat().st_size == file.size:
        return True
    partial.unlink()  # a link: never truncate it, that would empty the local file
    plan.replace_in_local_dir.add(file.path)
    logger.warning(
        "%s: %s in %s does not match the listing (edited?); downloading it",
        plan.label,
        file.path,
        plan.local_dir,
    )
    return False


def _recorded(plan: RepoPlan, file: RepoFile, download: Path, relative: Path) -> bool:
    """huggingface_hub's record of ``file`` names this commit or this etag."""
    metadata = download / f"{relative}.metadata"
    if not is_regular_file(metadata):
        return False
    try:
        with metadata.open("rb") as stream:
            lines = stream.read(_MAX_METADATA).decode("utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return False
    return len(lines) >= 2 and (lines[0].strip() == plan.commit or lines[1].strip() == file.etag)
