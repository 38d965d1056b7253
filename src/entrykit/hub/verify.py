"""``prefetch --verify``: check a repo in the cache against the lock file or its cached
listing, offline: every file present, of the right size, with the right hash."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from entrykit.errors import PrefetchFailed
from entrykit.hub.cache import matches_patterns
from entrykit.hub.files import FileHasher, RepoFile
from entrykit.hub.lockfile import LockFile
from entrykit.hub.names import is_commit
from entrykit.hub.planning import RepoPlan, walk_snapshot
from entrykit.hub.progress import human_bytes

logger = logging.getLogger("entrykit.prefetch")

ParallelMap = Callable[[Callable[[RepoFile], str], Sequence[RepoFile]], list[str]]


def verify_repo(plan: RepoPlan, lock: LockFile | None, parallel_map: ParallelMap) -> None:
    """Check ``plan``'s repo; ``parallel_map(task, items)`` checks files side by side.

    Raises PrefetchFailed listing the files missing or wrong, or when the repo is not cached.
    """
    plan.started = time.monotonic()
    spec = plan.spec
    entry = lock.find(spec.repo_type, spec.repo_id, spec.revision) if lock else None
    if entry is not None:
        plan.commit, listing = entry.commit, list(entry.files)
    else:
        plan.commit = plan.ref if is_commit(plan.ref) else plan.cache.read_ref(plan.ref) or ""
        found = plan.cache.read_tree(plan.commit) if plan.commit else None
        if found is None and plan.commit:
            found = walk_snapshot(plan.cache, plan.commit)
        if found is None:
            raise PrefetchFailed(
                f"{plan.label}: not in the cache ({plan.cache.root}); nothing to verify"
            )
        listing = [f for f in found if matches_patterns(f.path, plan.include, plan.exclude)]
    plan.files = listing
    problems = [p for p in parallel_map(lambda f: check_file(plan, f), listing) if p]
    plan.finished = time.monotonic()
    if problems:
        raise PrefetchFailed(
            f"{plan.label}: {len(problems)} of {len(listing)} files bad in "
            f"{plan.cache.root / 'snapshots' / plan.commit}:\n  " + "\n  ".join(problems)
        )
    logger.info(
        "%s: commit %s, %d files, %s verified in %.2f s",
        plan.label,
        plan.commit[:12],
        len(listing),
        human_bytes(sum(f.size for f in listing)),
        plan.finished - plan.started,
    )


def check_file(plan: RepoPlan, file: RepoFile) -> str:
    """'' when the cached file is right, else what is wrong with it."""
    pointer = plan.cache.pointer(plan.commit, file)
    try:
        size = pointer.stat().st_size
    except OSError:
        return f"{file.path}: missing"
    if size != file.size:
        return f"{file.path}: {size} bytes, expected {file.size}"
    hasher = FileHasher(file)
    hasher.update_from(pointer, size)
    if not hasher.matches():
        kind = "sha256" if file.sha256 else "git sha1"
        return f"{file.path}: {kind} differs from {file.etag[:12]}... (corrupt)"
    return ""
