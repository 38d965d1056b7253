"""The huggingface_hub cache layout, written and checked the way the library itself does.

A repo lives in ``<cache>/<type>s--<owner>--<name>/`` with ``blobs/<etag>`` (etag: the git
blob sha1, or the sha256 for LFS files), ``snapshots/<commit>/<path>`` relative symlinks to
the blobs, ``refs/<revision>`` holding a commit, and ``trees/<commit>.json`` (the listing
cache of huggingface_hub 2.x). Blob downloads are serialised by the same lock files
huggingface_hub uses (``<cache>/.locks/<repo folder>/<etag>.lock``), so entrykit and the
library can share one cache, even from several containers at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from entrykit.errors import PrefetchFailed

TREE_FORMAT_VERSION = 1  # huggingface_hub/_tree_cache.py
_LOCK_POLL = 0.2


@dataclass(frozen=True)
class RepoFile:
    """A file of a repo at one commit, as the tree listing describes it."""

    path: str
    size: int
    blob_id: str  # git blob sha1 (of the LFS pointer for LFS files)
    sha256: str | None = None  # LFS files only

    @property
    def etag(self) -> str:
        """The blob's name in the cache: what the Hub's ETag / X-Linked-Etag carries."""
        return self.sha256 or self.blob_id


class FileHasher:
    """Checks bytes against a `RepoFile`: sha256 for LFS files, the git blob sha1 otherwise."""

    def __init__(self, file: RepoFile) -> None:
        self.file = file
        self.reset()

    def reset(self) -> None:
        if self.file.sha256 is not None:
            self._hash = hashlib.sha256()
        else:
            self._hash = hashlib.sha1(b"blob %d\0" % self.file.size)

    def update(self, data: bytes | memoryview) -> None:
        self._hash.update(data)

    def update_from(self, path: Path, length: int) -> None:
        with path.open("rb") as stream:
            while length > 0:
                chunk = stream.read(min(length, 1 << 20))
                if not chunk:
                    break
                self._hash.update(chunk)
                length -= len(chunk)

    def matches(self) -> bool:
        expected = self.file.sha256 or self.file.blob_id
        return self._hash.hexdigest() == expected


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

    # --- reading -----------------------------------------------------------------------

    def blob(self, file: RepoFile) -> Path:
        return self.blobs / file.etag

    def pointer(self, commit: str, file: RepoFile) -> Path:
        pointer = self.root / "snapshots" / commit / Path(*file.path.split("/"))
        if ".." in file.path.split("/") or file.path.startswith("/"):
            raise PrefetchFailed(f"refusing a repo path outside the snapshot: {file.path!r}")
        return pointer

    def has_file(self, commit: str, file: RepoFile) -> bool:
        """The snapshot link exists and its blob has the expected size (cheap: two stats)."""
        try:
            return self.pointer(commit, file).stat().st_size == file.size
        except OSError:
            return False

    def read_ref(self, revision: str) -> str | None:
        try:
            commit = (self.root / "refs" / revision).read_text().strip()
        except OSError:
            return None
        return commit or None

    def read_tree(self, commit: str) -> list[RepoFile] | None:
        """The listing huggingface_hub cached for ``commit`` (``trees/<commit>.json``)."""
        try:
            data = json.loads((self.root / "trees" / f"{commit}.json").read_text("utf-8"))
            if data.get("format_version") != TREE_FORMAT_VERSION:
                return None
            return [
                RepoFile(path, int(info["size"]), str(info["blob_id"]), info.get("lfs_sha256"))
                for path, info in data["files"].items()
            ]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    # --- writing -----------------------------------------------------------------------

    def write_tree(self, commit: str, files: Iterable[RepoFile]) -> None:
        entries = {}
        for file in sorted(files, key=lambda f: f.path):
            info: dict[str, object] = {"size": file.size, "blob_id": file.blob_id}
            if file.sha256 is not None:
                info["lfs_sha256"] = file.sha256
                info["lfs_size"] = file.size
            entries[file.path] = info
        data = {"format_version": TREE_FORMAT_VERSION, "files": entries}
        write_atomic(self.root / "trees" / f"{commit}.json", json.dumps(data, indent=1))

    def write_ref(self, revision: str, commit: str) -> None:
        if revision == commit or self.read_ref(revision) == commit:
            return
        write_atomic(self.root / "refs" / revision, commit)

    def link(self, commit: str, file: RepoFile) -> None:
        """Point ``snapshots/<commit>/<path>`` at the blob with a relative link, atomically."""
        pointer = self.pointer(commit, file)
        pointer.parent.mkdir(parents=True, exist_ok=True)
        target = os.path.relpath(self.blob(file), pointer.parent)
        if pointer.is_symlink() and os.readlink(pointer) == target:
            return
        temporary = pointer.with_name(f".{pointer.name}.{uuid.uuid4().hex[:8]}.link")
        os.symlink(target, temporary)
        os.replace(temporary, pointer)

    @contextmanager
    def blob_lock(self, etag: str, *, should_stop: ShouldStop) -> Iterator[None]:
        """Hold huggingface_hub's lock for one blob; waits (checking ``should_stop``)."""
        from filelock import FileLock, Timeout

        self.locks.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.locks / f"{etag}.lock"), mode=0o664)
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

    def take_partial(self, file: RepoFile) -> Path:
        """Call with the blob lock held: the ``.incomplete`` file to resume into.

        Partial files left by dead processes are ours to take: entrykit's own
        ``<etag>.incomplete`` and huggingface_hub 2.x's ``<etag>.<random>.incomplete``. The
        longest one that is not longer than the file is kept (renamed to ours), the rest
        removed.
        """
        self.blobs.mkdir(parents=True, exist_ok=True)
        ours = self.blobs / f"{file.etag}.incomplete"
        candidates = [ours, *self.blobs.glob(f"{file.etag}.*.incomplete")]
        best: tuple[int, Path] | None = None
        for path in candidates:
            try:
                size = path.stat().st_size
            except OSError:
                continue
            if size <= file.size and (best is None or size > best[0]):
                best = (size, path)
        for path in candidates:
            if best is None or path != best[1]:
                path.unlink(missing_ok=True)
        if best is None or best[1] != ours:
            # The parts record (see prefetch_parts) belongs to our own partial file only.
            ours.with_name(ours.name + "-parts").unlink(missing_ok=True)
        if best is not None and best[1] != ours:
            os.replace(best[1], ours)
        return ours

    def sweep_partials(self) -> int:
        """Remove partial files whose blob lock is free (their writer is dead) and whose blob
        is already complete or no longer wanted by this run; returns how many were removed.
        Partial files of blobs being fetched are taken over by `take_partial` instead."""
        from filelock import FileLock, Timeout

        removed = 0
        for partial in self.blobs.glob("*.incomplete"):
            etag = partial.name.split(".", 1)[0]
            lock = FileLock(str(self.locks / f"{etag}.lock"), mode=0o664)
            try:
                lock.acquire(timeout=0)
            except (Timeout, OSError):
                continue  # someone is writing it
            try:
                partial.unlink(missing_ok=True)
                partial.with_name(partial.name + "-parts").unlink(missing_ok=True)
                removed += 1
            finally:
                lock.release()
        return removed

    def partial_bytes(self, file: RepoFile) -> int:
        """Bytes of ``file`` already present in a resumable partial file (0 if none)."""
        try:  # a file fetched in parts holds holes: its record says what is there
            record = json.loads((self.blobs / f"{file.etag}.incomplete-parts").read_text())
            return sum(int(done) for _, done, _ in record["parts"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        best = 0
        for path in self.blobs.glob(f"{file.etag}*.incomplete"):
            try:
                size = path.stat().st_size
            except OSError:
                continue
            if size <= file.size:
                best = max(best, size)
        return best


class ShouldStop:
    """Raises when the run must stop: one of ``events`` set (the caller's cancel, or another
    task failed), or the deadline passed."""

    def __init__(self, *events: threading.Event | None, deadline: float | None = None) -> None:
        self.events = tuple(e for e in events if e is not None)
        self.deadline = deadline  # time.monotonic() value, or None

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def __call__(self) -> None:
        if any(event.is_set() for event in self.events):
            raise PrefetchFailed("prefetch stopped")
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise PrefetchFailed("prefetch did not finish before its deadline")

    def sleep(self, seconds: float) -> None:
        """Sleep, waking early (and raising) when the run must stop."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self()
            if self.events:
                self.events[0].wait(min(left, 0.1))
            else:
                time.sleep(min(left, 0.1))
        self()


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so that readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        temporary.write_text(text, "utf-8")
        os.replace(temporary, path)
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
