"""``--local-dir DIR``: a repo's files as plain files in a folder, as ``hf download --local-dir``
leaves them, for servers that want a folder (vLLM, TGI, ``from_pretrained("/models/x")``).

Each file is a hard link to its cache blob when both are on one file system (no extra
space), else a copy. huggingface_hub's bookkeeping goes beside it in ``DIR/.cache/huggingface``:
``download/<path>.metadata`` (commit, etag, time) and the listing ``trees/<commit>.json``, so
that ``hf download --local-dir DIR`` finds every file up to date without downloading.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path

from entrykit.errors import ConfigError, NotEnoughDiskSpace, PrefetchFailed
from entrykit.hub.cache import CACHEDIR_TAG, write_atomic, write_listing
from entrykit.hub.files import RepoFile
from entrykit.hub.nofollow import is_regular_file
from entrykit.hub.planning import RepoPlan
from entrykit.specs import ModelSpec

logger = logging.getLogger("entrykit.prefetch")


def check_local_dirs(specs: Sequence[ModelSpec]) -> None:
    """ConfigError when two repos would place their files in one folder (or one inside the
    other): their files would overwrite each other. Reads nothing on disk (``plan`` and
    ``run`` call it before any step): paths are compared as written, ``~`` expanded."""
    seen: list[tuple[Path, ModelSpec]] = []
    for spec in specs:
        if spec.local_dir is None:
            continue
        folder = Path(os.path.abspath(spec.local_dir.expanduser()))  # normalised, no I/O
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


def place_in_local_dir(plan: RepoPlan, *, force: bool = False) -> int:
    """Place ``plan``'s files (all in the cache by now) under ``plan.local_dir``; returns
    how many were placed (the others were up to date). Raises PrefetchFailed on OSError."""
    root = plan.local_dir
    assert root is not None
    placed = 0
    try:
        _check_no_linked_folder(root, ".cache/huggingface/trees/listing")
        bookkeeping = _bookkeeping_dir(root)
        for file in plan.files:
            target = root / Path(*file.path.split("/"))
            metadata = bookkeeping / "download" / f"{Path(*file.path.split('/'))}.metadata"
            if not force and _up_to_date(target, metadata, plan.commit, file):
                continue
            _check_no_linked_folder(root, file.path)
            _check_no_linked_folder(root, f".cache/huggingface/download/{file.path}")
            _place(plan.cache.blob(file), target)
            write_atomic(metadata, f"{plan.commit}\n{file.etag}\n{time.time()}\n")
            placed += 1
        write_listing(bookkeeping, plan.commit, plan.files)
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise NotEnoughDiskSpace(
                f"{plan.label}: the file system of {root} is full: give that volume more space"
            ) from None
        raise PrefetchFailed(f"{plan.label}: cannot place the files in {root}: {error}") from error
    return placed


def _check_no_linked_folder(root: Path, path: str) -> None:
    """PrefetchFailed when a folder on the way to ``path`` inside ``root`` is a symlink: a
    file placed through it would land outside the local dir (``root`` itself may be one)."""
    folder = root
    for part in path.split("/")[:-1]:
        folder = folder / part
        if folder.is_symlink():
            raise PrefetchFailed(
                f"{folder} is a symlink, and prefetch places no file through a link out of "
                "the local dir: replace it with a folder"
            )


def _bookkeeping_dir(root: Path) -> Path:
    folder = root / ".cache" / "huggingface"
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in ((".gitignore", "*\n"), ("CACHEDIR.TAG", CACHEDIR_TAG)):
        if not (folder / name).exists():
            write_atomic(folder / name, text)
    return folder


def _up_to_date(target: Path, metadata: Path, commit: str, file: RepoFile) -> bool:
    try:
        recorded = metadata.read_text("utf-8").splitlines()
        return recorded[:2] == [commit, file.etag] and target.stat().st_size == file.size
    except (OSError, ValueError):
        return False


def _place(blob: Path, target: Path) -> None:
    """``target`` becomes the blob's bytes, atomically: a hard link, else a copy."""
    if not is_regular_file(blob):  # a symlink would be linked or copied as it points
        raise PrefetchFailed(f"{blob} is not a file of the cache (a symlink?): remove it")
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        try:
            os.link(blob, temporary, follow_symlinks=False)
        except OSError:
            shutil.copyfile(blob, temporary)
        os.replace(temporary, target)
    finally:
        with suppress(OSError):
            temporary.unlink()
