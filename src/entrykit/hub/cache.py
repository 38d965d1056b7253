"""The huggingface_hub cache layout, written and checked the way the library itself does.

A repo lives in ``<cache>/<type>s--<owner>--<name>/`` with ``blobs/<etag>`` (etag: the git
blob sha1, or the sha256 for LFS files), ``snapshots/<commit>/<path>`` relative symlinks to
the blobs, ``refs/<revision>`` holding a commit, and ``trees/<commit>.json`` (the listing
cache of huggingface_hub 2.x). Blob downloads are serialised by the same lock files
huggingface_hub uses (``<cache>/.locks/<repo folder>/<etag>.lock``), so entrykit and the
library can share one cache, even from several containers at once.
"""

from __future__ import annotations

import glob
import json
import os
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from entrykit.errors import PrefetchFailed
from entrykit.hub.files import RepoFile
from entrykit.hub.names import clash, is_blob_id, is_commit, path_problem
from entrykit.hub.nofollow import (
    FolderMaker,
    is_regular_file,
    open_no_follow,
    refuse_link,
    remove_if_link,
)
from entrykit.hub.stop import ShouldStop

TREE_FORMAT_VERSION = 1  # huggingface_hub/_tree_cache.py
SIDECAR_SUFFIX = "-parts"  # beside a partial file fetched in parts: which parts are done
_LOCK_POLL = 0.2


def repo_folder_name(repo_id: str, repo_type: str) -> str:
    return "--".join([f"{repo_type}s", *repo_id.split("/")])


def matches_patterns(path: str, include: Iterable[str], exclude: Iterable[str]) -> bool:
    """huggingface_hub's ``filter_repo_objects``: fnmatch globs, ``dir/`` meaning ``dir/*``."""
    import fnmatch

    def norm(pattern: str) -> str:
        return pattern + "*" if pattern.endswith("/") else pattern

    include = [norm(p) for p in include]
    if include and not any(fnmatch.fnmatch(path, p) for p in include):
        return False
    return not any(fnmatch.fnmatch(path, norm(p)) for p in exclude)


class RepoCache:
    """One repo's folder in the cache."""

    def __init__(self, cache_dir: Path, repo_id: str, repo_type: str) -> None:
        self.cache_dir = cache_dir
        self.folder_name = repo_folder_name(repo_id, repo_type)
        self.root = cache_dir / self.folder_name
        self.blobs = self.root / "blobs"
        self.locks = cache_dir / ".locks" / self.folder_name
        self._partials: dict[str, list[str]] | None = None  # etag -> partial file names
        self._partials_lock = threading.Lock()
        self._folders = FolderMaker()  # each folder written into is checked not to be a link

    def folder(self, *parts: str) -> Path:
        """``<repo folder>/<parts>``, made if missing; LinkedPath if a part is a symlink."""
        return self._folders.make(self.root, *parts)

    def locks_folder(self) -> Path:
        """``<cache>/.locks/<repo folder>``, made if missing; LinkedPath for a symlink."""
        return self._folders.make(self.cache_dir, ".locks", self.folder_name)

    def _partials_of(self, etag: str) -> list[Path]:
        """Partial files of ``etag`` left by earlier runs (``<etag>[.<x>].incomplete``).

        The blobs folder is read once per run, not once per file: with thousands of files, a
        glob per file costs quadratic time. A partial file another process starts later is
        its own (under the blob lock) and swept by `sweep_partials` if it dies."""
        with self._partials_lock:
            if self._partials is None:
                self._partials = {}
                with suppress(OSError):
                    for name in os.listdir(self.blobs):
                        if name.endswith(".incomplete"):
                            self._partials.setdefault(name.split(".", 1)[0], []).append(name)
            return [self.blobs / name for name in self._partials.get(etag, [])]

    # --- reading -----------------------------------------------------------------------

    def blob(self, file: RepoFile) -> Path:
        if not is_blob_id(file.etag):  # checked when listed; this guards every other source
            raise PrefetchFailed(f"refusing a blob name that is not a hash: {file.etag!r}")
        return self.blobs / file.etag

    def snapshot(self, commit: str) -> Path:
        if not is_commit(commit):
            raise PrefetchFailed(f"refusing a commit that is not 40 hex digits: {commit!r}")
        return self.root / "snapshots" / commit

    def pointer(self, commit: str, file: RepoFile) -> Path:
        problem = path_problem(file.path)
        if problem:
            raise PrefetchFailed(f"refusing the repo path {file.path!r}: {problem}")
        return self.snapshot(commit) / Path(*file.path.split("/"))

    def has_blob(self, file: RepoFile) -> bool:
        """The blob is a file of the expected size (a symlink there is not one of ours)."""
        return is_regular_file(self.blob(file), file.size)

    def has_file(self, commit: str, file: RepoFile) -> bool:
        """The snapshot link exists and leads to a file of the expected size, and the blob
        is a file of that size itself (cheap: a few stats)."""
        try:
            found = self.pointer(commit, file).stat().st_size == file.size
        except OSError:
            return False
        return found and self.has_blob(file)

    def read_ref(self, revision: str) -> str | None:
        """The commit ``refs/<revision>`` holds, or None (none, or not a commit id)."""
        if path_problem(revision):
            return None
        try:
            commit = (self.root / "refs" / revision).read_text().strip()
        except OSError:
            return None
        return commit if is_commit(commit) else None

    def read_tree(self, commit: str) -> list[RepoFile] | None:
        """The listing huggingface_hub cached for ``commit`` (``trees/<commit>.json``)."""
        return read_listing(self.root, commit)

    # --- writing -----------------------------------------------------------------------

    def write_tree(self, commit: str, files: Iterable[RepoFile]) -> None:
        self.snapshot(commit)  # refuses a commit that is not one
        write_listing(self.root, commit, files)

    def drop_tree(self, commit: str) -> None:
        """Forget the cached listing of ``commit`` (it was found wrong); best effort."""
        if is_commit(commit):
            with suppress(OSError):
                (self.root / "trees" / f"{commit}.json").unlink()

    def write_ref(self, revision: str, commit: str) -> None:
        if path_problem(revision):  # specs.check_revision refused it already
            raise PrefetchFailed(f"refusing the revision {revision!r}: {path_problem(revision)}")
        if revision == commit or self.read_ref(revision) == commit:
            return
        *folders, name = revision.split("/")
        write_atomic(self.folder("refs", *folders) / name, commit)

    def link(self, commit: str, file: RepoFile) -> None:
        """Point ``snapshots/<commit>/<path>`` at the blob with a relative link, atomically."""
        pointer = self.pointer(commit, file)
        self.folder("snapshots", commit, *file.path.split("/")[:-1])
        target = os.path.relpath(self.blob(file), pointer.parent)
        try:
            os.symlink(target, pointer)  # the usual case: nothing there yet
            return
        except FileExistsError:
            pass
        if pointer.is_symlink() and os.readlink(pointer) == target:
            return
        temporary = pointer.with_name(f".{pointer.name}.{uuid.uuid4().hex[:8]}.link")
        os.symlink(target, temporary)
        try:
            os.replace(temporary, pointer)
        except IsADirectoryError:
            raise PrefetchFailed(
                f"cannot link {file.path}: {pointer} is a folder (remove it)"
            ) from None
        finally:
            with suppress(OSError):
                temporary.unlink()

    @contextmanager
    def blob_lock(self, etag: str, *, should_stop: ShouldStop) -> Iterator[None]:
        """Hold huggingface_hub's lock for one blob; waits (checking ``should_stop``)."""
        if not is_blob_id(etag):
            raise PrefetchFailed(f"refusing a blob name that is not a hash: {etag!r}")
        with held_lock(self._lock_file(etag), should_stop):
            yield

    def _lock_file(self, etag: str) -> Path:
        """The blob's lock file; LinkedPath when it (or its folder) is a symlink, which
        filelock would follow and truncate."""
        path = self.locks_folder() / f"{etag}.lock"
        if path.is_symlink():
            raise refuse_link(path)
        return path

    def take_partial(self, file: RepoFile, *, fresh: bool = False) -> Path:
        """Call with the blob lock held: the ``.incomplete`` file to resume into.

        Partial files left by dead processes are ours to take: entrykit's own
        ``<etag>.incomplete`` and huggingface_hub 2.x's ``<etag>.<random>.incomplete``. The
        longest one that is not longer than the file is kept (renamed to ours), the rest
        removed; ``fresh``: none is kept.
        """
        blob = self.blob(file)
        self.folder("blobs")
        ours = blob.with_name(f"{file.etag}.incomplete")
        candidates = [ours, *(p for p in self._partials_of(file.etag) if p != ours)]
        best: tuple[int, Path] | None = None
        for path in candidates:
            if remove_if_link(path):  # not a partial file of ours: never written through
                continue
            try:
                size = path.stat().st_size
            except OSError:
                continue
            if not fresh and size <= file.size and (best is None or size > best[0]):
                best = (size, path)
        for path in candidates:
            if best is None or path != best[1]:
                path.unlink(missing_ok=True)
        if best is None or best[1] != ours:
            # The parts record (see parts.py) belongs to our own partial file only.
            ours.with_name(ours.name + "-parts").unlink(missing_ok=True)
        if best is not None and best[1] != ours:
            os.replace(best[1], ours)
        return ours

    def sweep_partials(self) -> int:
        """Remove partial files whose blob lock is free (their writer is dead) and whose blob
        is already complete or no longer wanted by this run; returns how many were removed.
        Partial files of blobs being fetched are taken over by `take_partial` instead."""
        from filelock import FileLock, Timeout

        if self.blobs.is_symlink():
            raise refuse_link(self.blobs)
        removed = 0
        for partial in self.blobs.glob("*.incomplete"):
            etag = partial.name.split(".", 1)[0]
            if not is_blob_id(etag):
                continue  # not a name of ours or huggingface_hub's
            lock = FileLock(str(self._lock_file(etag)), mode=0o664)
            try:
                lock.acquire(timeout=0)
            except (Timeout, OSError):
                continue  # someone is writing it
            try:
                partial.unlink(missing_ok=True)
                remove_sidecar(partial)
                removed += 1
            finally:
                lock.release()
        return removed

    def partial_bytes(self, file: RepoFile) -> int:
        """Bytes of ``file`` already present in a resumable partial file (0 if none)."""
        try:  # a file fetched in parts holds holes: its record says what is there
            sidecar = self.blobs / f"{file.etag}.incomplete-parts"
            if not is_regular_file(sidecar):
                raise FileNotFoundError(sidecar)  # a FIFO there would block the read
            record = json.loads(sidecar.read_text())
            return sum(int(done) for _, done, _ in record["parts"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        best = 0
        for path in self._partials_of(file.etag):
            try:
                size = path.stat().st_size
            except OSError:
                continue
            if size <= file.size:
                best = max(best, size)
        return best


def read_listing(folder: Path, commit: str) -> list[RepoFile] | None:
    """``folder/trees/<commit>.json`` as `write_listing` and huggingface_hub write it, every
    name checked; None when missing or not valid."""
    if not is_commit(commit):
        return None
    try:
        data = json.loads((folder / "trees" / f"{commit}.json").read_text("utf-8"))
        if data.get("format_version") != TREE_FORMAT_VERSION:
            return None
        files = [
            RepoFile(
                path,
                int(info["size"]),
                str(info["blob_id"]),
                info.get("lfs_sha256"),
                info.get("xet_hash"),
            )
            for path, info in data["files"].items()
        ]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if any(path_problem(f.path) or not is_blob_id(f.etag) for f in files):
        return None
    if clash(f.path for f in files) is not None:
        return None  # not a listing we wrote or huggingface_hub would: fetch it again
    return files


@contextmanager
def held_lock(path: Path, should_stop: Callable[[], None]) -> Iterator[None]:
    """Hold the file lock ``path`` (huggingface_hub's kind), waiting as long as it takes but
    calling ``should_stop`` (which raises to give up) between tries."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(path), mode=0o664)
    while True:
        try:
            lock.acquire(timeout=_LOCK_POLL)
            break
        except Timeout:
            should_stop()
    try:
        yield
    finally:
        lock.release()


def write_listing(folder: Path, commit: str, files: Iterable[RepoFile]) -> None:
    """``folder/trees/<commit>.json`` as huggingface_hub's tree cache writes it (Xet hash
    included), so that the library reuses the listing instead of asking the Hub again."""
    entries = {}
    for file in sorted(files, key=lambda f: f.path):
        info: dict[str, object] = {"size": file.size, "blob_id": file.blob_id}
        if file.sha256 is not None:
            info["lfs_sha256"] = file.sha256
            info["lfs_size"] = file.size
        if file.xet_hash is not None:
            info["xet_hash"] = file.xet_hash
        entries[file.path] = info
    data = {"format_version": TREE_FORMAT_VERSION, "files": entries}
    trees = FolderMaker().make(folder, "trees")
    write_atomic(trees / f"{commit}.json", json.dumps(data, indent=1))


def remove_sidecar(partial: Path) -> None:
    """Remove the parts record of ``partial`` and the temporaries of it a killed run left
    (`write_atomic` names them ``.NAME.XXXXXXXX.tmp``); the caller holds the blob's lock."""
    sidecar = partial.with_name(partial.name + SIDECAR_SUFFIX)
    sidecar.unlink(missing_ok=True)
    for stale in partial.parent.glob(f".{glob.escape(sidecar.name)}.*.tmp"):
        stale.unlink(missing_ok=True)


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so that readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        descriptor = open_no_follow(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(temporary, path)  # replaces a symlink at ``path``, never follows it
    finally:
        temporary.unlink(missing_ok=True)


CACHEDIR_TAG = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This file is a cache directory tag created by entrykit (as huggingface_hub does).\n"
    "# For information about cache directory tags, see: https://bford.info/cachedir/\n"
)


def tag_cache_dir(cache_dir: Path) -> None:
    """Mark the cache for backup tools, as huggingface_hub does (best effort)."""
    tag = cache_dir / "CACHEDIR.TAG"
    if not tag.exists():
        with suppress(OSError):
            write_atomic(tag, CACHEDIR_TAG)
