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
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from entrykit.errors import NotEnoughDiskSpace, PrefetchFailed
from entrykit.hub.cache import CACHEDIR_TAG, held_lock, write_atomic, write_listing
from entrykit.hub.files import RepoFile
from entrykit.hub.nofollow import is_regular_file, refuse_link
from entrykit.hub.planning import RepoPlan
from entrykit.hub.progress import plural

logger = logging.getLogger("entrykit.prefetch")

_TEMPORARY = re.compile(r"\..+\.[0-9a-f]{8}\.tmp")  # what _place and write_atomic name


def place_in_local_dir(
    plan: RepoPlan, *, force: bool = False, should_stop: Callable[[], None] = lambda: None
) -> int:
    """Place ``plan``'s files (all in the cache by now) under ``plan.local_dir``; returns
    how many were placed (the others were up to date). Temporaries of ours that a stopped
    run left are removed first, under the local dir's lock (waited for, checking
    ``should_stop``). Raises PrefetchFailed on OSError, NotEnoughDiskSpace when full."""
    root = plan.local_dir
    assert root is not None
    placed = 0
    try:
        _check_no_linked_folder(root, ".cache/huggingface/trees/listing")
        bookkeeping = _bookkeeping_dir(root)
        with _placing_lock(bookkeeping, should_stop):
            swept = _sweep_temporaries(_folders_of(plan, root, bookkeeping))
            if swept:
                removed = plural(swept, "temporary file")
                logger.info("%s: removed %s left in %s", plan.label, removed, root)
            for file in plan.files:
                target = root / Path(*file.path.split("/"))
                metadata = bookkeeping / "download" / f"{Path(*file.path.split('/'))}.metadata"
                wrong = file.path in plan.replace_in_local_dir
                if not (force or wrong) and _up_to_date(target, metadata, plan.commit, file):
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


@contextmanager
def _placing_lock(bookkeeping: Path, should_stop: Callable[[], None]) -> Iterator[None]:
    """One run at a time places files in a local dir: whatever temporary of ours is found
    while holding this lock was left by a run that stopped."""
    path = bookkeeping / "entrykit.lock"
    if path.is_symlink():
        raise refuse_link(path)
    with held_lock(path, should_stop):
        yield


def _folders_of(plan: RepoPlan, root: Path, bookkeeping: Path) -> set[Path]:
    """Every folder this placement writes into: where a stopped one left temporaries."""
    folders = {root, bookkeeping / "trees"}
    for file in plan.files:
        relative = Path(*file.path.split("/"))
        folders.add((root / relative).parent)
        folders.add((bookkeeping / "download" / relative).parent)
    return folders


def _sweep_temporaries(folders: Iterable[Path]) -> int:
    """Remove ``.<name>.<8 hex>.tmp`` files (the temporaries `_place` and `write_atomic`
    name) in ``folders``; returns how many."""
    removed = 0
    for folder in folders:
        try:
            names = os.listdir(folder)
        except OSError:
            continue  # not made yet
        for name in names:
            if _TEMPORARY.fullmatch(name):
                with suppress(FileNotFoundError):
                    os.unlink(folder / name)
                    removed += 1
    return removed


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
        # a symlink is never up to date: a local dir holds files (it may point anywhere)
        return recorded[:2] == [commit, file.etag] and is_regular_file(target, file.size)
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
            _copy(blob, temporary)
        os.replace(temporary, target)
    finally:
        with suppress(OSError):
            temporary.unlink()


def _copy(blob: Path, temporary: Path) -> None:
    """Copy ``blob`` to ``temporary`` through a file with no name (``O_TMPFILE``), named
    only once whole: a run stopped mid-copy (SIGTERM ends the process at once) leaves
    nothing behind. Where the file system cannot, a plain copy (swept by the next run)."""
    unnamed = getattr(os, "O_TMPFILE", 0)  # Linux only
    try:
        if not unnamed:
            raise IsADirectoryError(temporary.parent)
        descriptor = os.open(temporary.parent, unnamed | os.O_WRONLY | os.O_CLOEXEC, 0o666)
    except OSError:  # EOPNOTSUPP, EISDIR: no O_TMPFILE on this file system
        shutil.copyfile(blob, temporary)
        return
    try:
        with blob.open("rb") as source:
            size = os.fstat(source.fileno()).st_size
            copied = 0
            while copied < size:
                sent = os.sendfile(descriptor, source.fileno(), copied, size - copied)
                if sent == 0:
                    raise PrefetchFailed(f"{blob} shrank while it was copied")
                copied += sent
        _name_unnamed(descriptor, temporary)
    except FileNotFoundError:  # no /proc: copy in the open instead
        shutil.copyfile(blob, temporary)
    finally:
        os.close(descriptor)


def _name_unnamed(descriptor: int, path: Path) -> None:
    """Give the ``O_TMPFILE`` file open as ``descriptor`` the name ``path``: linkat with
    AT_SYMLINK_FOLLOW through ``/proc/self/fd`` (a directory fd makes os.link use linkat)."""
    fds = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.link(str(descriptor), path, src_dir_fd=fds, follow_symlinks=True)
    finally:
        os.close(fds)
