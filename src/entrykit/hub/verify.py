"""``prefetch --verify``: check a repo in the cache (or its ``--local-dir``) against the lock
file or its cached listing, offline: every file present, of the right size, with the right
hash (sha256 for LFS files, the git blob sha1 for the others)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from entrykit.errors import PrefetchFailed
from entrykit.hub.cache import matches_patterns, read_listing
from entrykit.hub.files import FileHasher, RepoFile
from entrykit.hub.lockfile import LockFile
from entrykit.hub.names import is_commit
from entrykit.hub.planning import RepoPlan, walk_snapshot
from entrykit.hub.progress import human_bytes, plural

logger = logging.getLogger("entrykit.prefetch")

ParallelMap = Callable[[Callable[[RepoFile], str], Sequence[RepoFile]], list[str]]


def verify_repo(plan: RepoPlan, lock: LockFile | None, parallel_map: ParallelMap) -> None:
    """Check ``plan``'s repo; ``parallel_map(task, items)`` checks files side by side. With
    a local dir, its files are checked (the cache may not be there: a final image often
    holds the local dir only), against the lock file, else the cache's or the local dir's
    own listing.

    Raises PrefetchFailed listing the files missing or wrong, or when the repo is not cached.
    """
    plan.started = time.monotonic()
    spec = plan.spec
    entry = lock.find(spec.repo_type, spec.repo_id, spec.revision) if lock else None
    if entry is not None:
        plan.commit, listing = entry.commit, list(entry.files)
    else:
        plan.commit = plan.ref if is_commit(plan.ref) else plan.cache.read_ref(plan.ref) or ""
        found = _listing(plan)
        if found is None:
            where = f"the cache ({plan.cache.root})"
            if plan.local_dir is not None:
                where = f"{where} or the local dir {plan.local_dir}, and no lock file"
            raise PrefetchFailed(f"{plan.label}: not in {where}; nothing to verify")
        listing = [f for f in found if matches_patterns(f.path, plan.include, plan.exclude)]
    plan.files = listing
    problems = [p for p in parallel_map(lambda f: check_file(plan, f), listing) if p]
    plan.finished = time.monotonic()
    folder = plan.local_dir or plan.cache.root / "snapshots" / plan.commit
    if problems:
        raise PrefetchFailed(
            f"{plan.label}: {len(problems)} of {len(listing)} files bad in {folder}:\n  "
            + "\n  ".join(problems)
        )
    logger.info(
        "%s: commit %s, %s, %s verified in %s in %.2f s",
        plan.label,
        plan.commit[:12],
        plural(len(listing), "file"),
        human_bytes(sum(f.size for f in listing)),
        folder,
        plan.finished - plan.started,
    )


def _listing(plan: RepoPlan) -> list[RepoFile] | None:
    """The listing of ``plan.commit`` from the cache, else (with a local dir) from the local
    dir's bookkeeping; with no commit known, the local dir's latest listing."""
    found = plan.cache.read_tree(plan.commit) if plan.commit else None
    if found is None and plan.commit and plan.local_dir is None:
        found = walk_snapshot(plan.cache, plan.commit)
    if found is not None or plan.local_dir is None:
        return found
    bookkeeping = plan.local_dir / ".cache" / "huggingface"
    if not plan.commit:
        listings = sorted((bookkeeping / "trees").glob("*.json"), key=lambda p: p.stat().st_mtime)
        plan.commit = listings[-1].stem if listings else ""
    return read_listing(bookkeeping, plan.commit) if plan.commit else None


def check_file(plan: RepoPlan, file: RepoFile) -> str:
    """'' when the file (in the local dir if there is one, else the cache) is right, else
    what is wrong with it."""
    if plan.local_dir is not None:
        path = plan.local_dir / Path(*file.path.split("/"))
    else:
        path = plan.cache.pointer(plan.commit, file)
    try:
        size = path.stat().st_size
    except OSError:
        return f"{file.path}: missing"
    if size != file.size:
        return f"{file.path}: {size} bytes, expected {file.size}"
    hasher = FileHasher(file)
    hasher.update_from(path, size)
    if not hasher.matches():
        kind = "sha256" if file.sha256 else "git sha1"
        return f"{file.path}: {kind} differs from {file.etag[:12]}... (corrupt)"
    return ""
