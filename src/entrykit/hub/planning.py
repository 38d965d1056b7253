"""Phase 1 of a prefetch: for one spec, its commit, its selected files and what is missing.

The commit comes from the lock file, from a revision that is already a commit, or one
request; the listing from the lock file, the listing cache ``trees/<commit>.json``, or the
paginated tree request. With a lock file and a warm cache, no request at all. When the Hub
cannot be reached and the cache holds a complete snapshot of the requested branch or tag
(its ref and every file of its cached listing), that snapshot is used, with one warning.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from entrykit.errors import PrefetchFailed
from entrykit.hub.api import list_files, resolve_commit
from entrykit.hub.cache import RepoCache, matches_patterns
from entrykit.hub.files import RepoFile
from entrykit.hub.http import HubHttp
from entrykit.hub.lockfile import DEFAULT_BRANCH, LockEntry, LockFile
from entrykit.hub.names import is_commit
from entrykit.hub.progress import human_bytes, plural
from entrykit.hub.report import RepoReport
from entrykit.hub.retry import HubUnreachable
from entrykit.specs import ModelSpec

logger = logging.getLogger("entrykit.prefetch")


@dataclass
class RepoPlan:
    """One spec, planned: its commit, its selected files and what the cache lacks."""

    spec: ModelSpec
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    cache: RepoCache
    local_dir: Path | None = None
    commit: str = ""
    files: list[RepoFile] = field(default_factory=list)
    missing: list[RepoFile] = field(default_factory=list)
    fetched_listing: list[RepoFile] | None = None  # from the Hub: cached once checked
    cached_listing: bool = False  # the listing came from trees/<commit>.json
    pending: int = 0  # blob groups still downloading
    downloaded: int = 0
    reused: int = 0  # files taken from the local dir (left by hf download)
    replace_in_local_dir: set[str] = field(default_factory=set)  # found wrong there
    started: float = 0.0
    finished: float = 0.0

    @property
    def label(self) -> str:
        return str(self.spec)

    @property
    def ref(self) -> str:
        return self.spec.revision or DEFAULT_BRANCH

    def lock_entry(self) -> LockEntry:
        return LockEntry(
            self.spec.repo_id,
            self.spec.repo_type,
            self.ref,  # the revision resolved: "main" when none was given
            self.commit,
            self.include,
            self.exclude,
            tuple(sorted(self.files, key=lambda f: f.path)),
        )

    def report(self, *, dry_run: bool = False) -> RepoReport:
        return RepoReport(
            spec=self.label,
            repo_id=self.spec.repo_id,
            repo_type=self.spec.repo_type,
            revision=self.spec.revision,
            commit=self.commit,
            files=len(self.files),
            bytes=sum(f.size for f in self.files),
            downloaded=self.downloaded,
            seconds=self.finished - self.started,
            source="network" if self.downloaded else "cache",
            snapshot=self.cache.root / "snapshots" / self.commit,
            local_dir=self.local_dir,
            to_download=tuple((f.path, f.size) for f in self.missing) if dry_run else (),
        )


def plan_repo(
    plan: RepoPlan,
    hub: Callable[[], HubHttp],
    lock: LockFile | None,
    *,
    offline: bool,
    force: bool = False,
) -> None:
    """Fill in ``plan``'s commit, files and missing files. ``hub`` gives the HTTP client
    (made on first use: a warm start with a lock file makes none).

    Raises RepoRefused (42), PrefetchFailed (40: offline and not cached, a bad answer)."""
    plan.started = time.monotonic()
    spec = plan.spec
    entry = lock.find(spec.repo_type, spec.repo_id, spec.revision) if lock else None
    pinned = ""
    if entry is not None:
        plan.commit, pinned = entry.commit, " (pinned by the lock file)"
    elif is_commit(plan.ref):
        plan.commit = plan.ref
    elif offline:
        plan.commit = plan.cache.read_ref(plan.ref) or ""
        if not plan.commit:
            raise PrefetchFailed(
                f"{plan.label}: {_not_cached(plan, f'revision {plan.ref}')}, and offline"
            )
    else:
        plan.commit = _resolve(plan, hub)
    if entry is not None and (set(entry.include), set(entry.exclude)) == (
        set(plan.include),
        set(plan.exclude),
    ):
        plan.files = list(entry.files)
    else:
        listing = _listing(plan, hub, offline=offline, force=force)
        plan.files = [f for f in listing if matches_patterns(f.path, plan.include, plan.exclude)]
        if not plan.files:
            logger.warning("%s: no file matches the include / exclude patterns", plan.label)
    cached = plan.cache.has_file
    plan.missing = [f for f in plan.files if force or not cached(plan.commit, f)]
    if offline and plan.missing:
        raise PrefetchFailed(
            f"{plan.label}: {plural(len(plan.missing), 'file')} missing from the cache, and "
            "offline: " + sample(f.path for f in plan.missing)
        )
    todo = sum(f.size for f in plan.missing)
    logger.info(
        "%s: commit %s%s, %s, %s; %s",
        plan.label,
        plan.commit[:12],
        pinned,
        plural(len(plan.files), "file"),
        human_bytes(sum(f.size for f in plan.files)),
        f"{human_bytes(todo)} to download" if plan.missing else "all in the cache",
    )


def _not_cached(plan: RepoPlan, what: str) -> str:
    """``what`` is not in the cache, and which revisions the cache holds of the repo."""
    refs = plan.cache.root / "refs"
    named = {}
    if refs.is_dir():
        for path in sorted(refs.rglob("*")):
            if path.is_file() and (
                commit := plan.cache.read_ref(path.relative_to(refs).as_posix())
            ):
                named[commit] = f"{path.relative_to(refs).as_posix()} ({commit[:12]})"
    snapshots = plan.cache.root / "snapshots"
    found = sorted(p.name for p in snapshots.glob("*") if is_commit(p.name))
    held = [named.get(commit, commit[:12]) for commit in found]
    where = f"the cache ({plan.cache.root})"
    if not held:
        return f"{what} is not in {where}"
    return f"{what} is not in {where}, which holds only {sample(held)}"


def _resolve(plan: RepoPlan, hub: Callable[[], HubHttp]) -> str:
    """The commit of the branch or tag; the cached one when the Hub is out of reach and the
    cache holds that commit's complete snapshot."""
    spec = plan.spec
    standby = _complete_cached_commit(plan)
    if standby is None:
        return resolve_commit(hub(), plan.label, spec.repo_id, spec.repo_type, plan.ref)
    policy = hub().policy
    give_up = min(policy.outage_give_up, policy.give_up_after)
    try:
        return resolve_commit(
            hub(), plan.label, spec.repo_id, spec.repo_type, plan.ref, give_up_after=give_up
        )
    except HubUnreachable as error:
        logger.warning(
            "%s: the Hub is out of reach (%s); using the cached snapshot of %s, commit %s",
            plan.label,
            error,
            plan.ref,
            standby,
        )
        return standby


def _complete_cached_commit(plan: RepoPlan) -> str | None:
    """The commit ``refs/<ref>`` names when every selected file of its cached listing is in
    the cache (two stats a file), else None."""
    commit = plan.cache.read_ref(plan.ref)
    listing = plan.cache.read_tree(commit) if commit else None
    if commit is None or listing is None:
        return None
    wanted = [f for f in listing if matches_patterns(f.path, plan.include, plan.exclude)]
    return commit if all(plan.cache.has_file(commit, f) for f in wanted) else None


def _listing(
    plan: RepoPlan, hub: Callable[[], HubHttp], *, offline: bool, force: bool
) -> list[RepoFile]:
    """The commit's listing: cached (unless ``force``), else from the Hub. A listing from the
    Hub is written to the cache only once its files were found as listed (see prefetch.py):
    a wrong one must not outlive the run that found it wrong."""
    listing = None if force and not offline else plan.cache.read_tree(plan.commit)
    if listing is not None:
        plan.cached_listing = True
        return listing
    if offline:
        listing = walk_snapshot(plan.cache, plan.commit)
        if listing is None:
            raise PrefetchFailed(
                f"{plan.label}: {_not_cached(plan, f'commit {plan.commit}')}, and offline"
            )
        logger.warning("%s: no cached listing; taking the snapshot folder as complete", plan.label)
        return listing
    spec = plan.spec
    plan.fetched_listing = list_files(hub(), plan.label, spec.repo_id, spec.repo_type, plan.commit)
    return plan.fetched_listing


def walk_snapshot(cache: RepoCache, commit: str) -> list[RepoFile] | None:
    """The files of a snapshot folder with no cached listing, known by their blob names."""
    root = cache.snapshot(commit)
    if not root.is_dir():
        return None
    files = []
    for path in sorted(root.rglob("*")):
        if path.is_dir():
            continue
        etag = Path(os.readlink(path)).name if path.is_symlink() else ""
        size = file_size(path)
        sha256 = etag if len(etag) == 64 else None
        files.append(RepoFile(path.relative_to(root).as_posix(), max(size, 0), etag, sha256))
    return files


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


def sample(paths: Iterable[str], limit: int = 5) -> str:
    items = list(paths)
    text = ", ".join(items[:limit])
    return text + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")
