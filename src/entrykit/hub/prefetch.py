"""Prefetch Hugging Face snapshots into the huggingface_hub cache (INTERFACE §6).

A run has three phases:

1. plan, repos side by side: the commit of each spec (from the lock file, from a revision that
   is already a commit, or one request), its file listing (from the lock file, from the
   listing cache ``trees/<commit>.json``, or the paginated tree request), the files selected by
   the include / exclude patterns, and which of them the cache lacks. With a lock file and a
   warm cache, this phase makes no request at all, whatever the revision.
2. check the bytes still missing against the free space of the cache's file system (41).
3. download the missing blobs, files of all repos in one pool of ``hf_max_workers`` threads,
   each under huggingface_hub's own blob lock, resuming partial files, checking every byte
   against the listing, then linking ``snapshots/<commit>/<path>`` and writing
   ``refs/<revision>`` once the repo is complete.

Lock file rule (``--lock FILE`` / ``ENTRYKIT_HF_LOCKFILE``): if the file exists, every spec it
holds is pinned to its commit (and, with the same patterns, to its file list); specs it does
not hold are resolved and added. A missing file is created. The file is rewritten only when
its content changes, and then holds exactly the specs of this run. With no spec given, the
specs come from the lock file.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeVar

from entrykit.errors import EntrykitError, NotEnoughDiskSpace, PrefetchFailed
from entrykit.hub.cache import (
    FileHasher,
    RepoCache,
    RepoFile,
    ShouldStop,
    matches_patterns,
    tag_cache_dir,
)
from entrykit.hub.lockfile import LockEntry, LockFile, read_lock
from entrykit.hub.progress import Progress, human_bytes

if TYPE_CHECKING:
    from entrykit.hub.client import HubAccess, HubClient, RetryPolicy
    from entrykit.settings import ModelSpec, Settings

__all__ = ["PrefetchReport", "RepoReport", "prefetch", "prefetch_models"]

logger = logging.getLogger("entrykit.prefetch")

_T = TypeVar("_T")
_R = TypeVar("_R")

PROGRESS_INTERVAL = 10.0  # seconds between progress lines when stderr is not a terminal
DEFAULT_BRANCH = "main"


@dataclass(frozen=True)
class RepoReport:
    """What one spec came to."""

    spec: str
    repo_id: str
    repo_type: str
    revision: str | None  # as requested
    commit: str
    files: int
    bytes: int  # size of the selected files
    downloaded: int  # bytes received from the network by this run
    seconds: float
    source: Literal["cache", "network"]
    snapshot: Path


@dataclass(frozen=True)
class PrefetchReport:
    """The result of `prefetch_models`: one `RepoReport` per spec, in the order given."""

    repos: tuple[RepoReport, ...]
    seconds: float
    lockfile: Path | None = None
    verified: bool = False

    @property
    def downloaded(self) -> int:
        return sum(repo.downloaded for repo in self.repos)


def prefetch_models(
    settings: Settings,
    *,
    verify: bool = False,
    offline: bool = False,
    cancel: threading.Event | None = None,
    access: HubAccess | None = None,
    policy: RetryPolicy | None = None,
    deadline: float | None = None,
    progress_interval: float = PROGRESS_INTERVAL,
) -> PrefetchReport:
    """Download (or, with ``verify``, check) ``settings.hf_models`` into the Hub cache.

    ``offline`` (or ``HF_HUB_OFFLINE=1``) uses the cache only. ``access`` overrides where the
    Hub, the cache and the token are (default: the environment, as huggingface_hub reads it);
    ``deadline`` bounds the whole run in seconds.

    Raises RepoRefused (42) for a repo or revision that is missing, gated or refused;
    NotEnoughDiskSpace (41) when the cache's file system cannot hold the missing bytes;
    PrefetchFailed (40) for anything else, including ``verify`` finding bad files.
    """
    lockfile = settings.hf_lockfile
    if lockfile is not None and not lockfile.is_absolute():
        lockfile = settings.cwd / lockfile
    return _Run(
        specs=settings.hf_models,
        include=settings.hf_include,
        exclude=settings.hf_exclude,
        lockfile=lockfile,
        max_workers=settings.hf_max_workers,
        cancel=cancel,
        access=access,
        policy=policy,
        deadline=deadline,
        progress_interval=progress_interval,
    ).execute(verify=verify, offline=offline)


def prefetch(
    *specs: str,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    lockfile: str | os.PathLike[str] | None = None,
    verify: bool = False,
    offline: bool = False,
    max_workers: int = 8,
) -> PrefetchReport:
    """Prefetch repos from a build script: ``prefetch("acme/encoder@v2", "dataset:acme/eval")``.

    Specs are ``[TYPE:]OWNER/NAME[@REVISION]``; ``include`` / ``exclude`` are glob patterns
    applied to every repo. Raises what `prefetch_models` raises, and ConfigError for a bad spec.
    """
    from entrykit.settings import ModelSpec

    return _Run(
        specs=tuple(ModelSpec.parse(spec) for spec in specs),
        include=tuple(include),
        exclude=tuple(exclude),
        lockfile=None if lockfile is None else Path(lockfile).absolute(),
        max_workers=max_workers,
    ).execute(verify=verify, offline=offline)


# --- the run -----------------------------------------------------------------------------


@dataclass
class _Plan:
    """One spec, planned: its commit, its selected files and what the cache lacks."""

    spec: ModelSpec
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    cache: RepoCache
    commit: str = ""
    files: list[RepoFile] = field(default_factory=list)
    missing: list[RepoFile] = field(default_factory=list)
    pending: int = 0  # blob groups still downloading
    downloaded: int = 0
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
            self.spec.revision,
            self.commit,
            self.include,
            self.exclude,
            tuple(sorted(self.files, key=lambda f: f.path)),
        )

    def report(self) -> RepoReport:
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
        )


class _Run:
    def __init__(
        self,
        *,
        specs: Sequence[ModelSpec],
        include: tuple[str, ...],
        exclude: tuple[str, ...],
        lockfile: Path | None,
        max_workers: int,
        cancel: threading.Event | None = None,
        access: HubAccess | None = None,
        policy: RetryPolicy | None = None,
        deadline: float | None = None,
        progress_interval: float = PROGRESS_INTERVAL,
    ) -> None:
        self.specs = specs
        self.include = include
        self.exclude = exclude
        self.lockfile = lockfile
        self.max_workers = max(1, max_workers)
        self.cancel = cancel
        self.access = access
        self.policy = policy
        self.progress_interval = progress_interval
        self.abort = threading.Event()
        self.should_stop = ShouldStop(
            self.abort, cancel, deadline=None if deadline is None else time.monotonic() + deadline
        )
        self.started = time.monotonic()
        self._client: HubClient | None = None
        self._client_lock = threading.Lock()
        self._plans_lock = threading.Lock()

    def execute(self, *, verify: bool, offline: bool) -> PrefetchReport:
        lock = read_lock(self.lockfile) if self.lockfile is not None else None
        specs = list(dict.fromkeys(self.specs)) or _specs_from_lock(lock)
        if not specs:
            logger.info("no repos to prefetch")
            return PrefetchReport((), 0.0, self.lockfile, verify)
        access = self._access()
        plans = [self._new_plan(spec, access.cache_dir) for spec in specs]
        offline = offline or access.offline
        try:
            if verify:
                self._run_parallel(lambda plan: self._verify(plan, lock), plans)
            else:
                self._run_parallel(lambda plan: self._plan(plan, lock, offline=offline), plans)
                if not offline:
                    self._check_disk_space(access.cache_dir, plans)
                    self._download(plans)
                for plan in plans:
                    if not plan.missing:
                        self._finish(plan)
                if self.lockfile is not None:
                    self._write_lock(lock, plans)
        finally:
            if self._client is not None:
                self._client.close()
        report = PrefetchReport(
            tuple(plan.report() for plan in plans),
            time.monotonic() - self.started,
            self.lockfile,
            verify,
        )
        if not verify:
            logger.info(
                "prefetch done: %d repo%s, %s downloaded in %.2f s",
                len(plans),
                "" if len(plans) == 1 else "s",
                human_bytes(report.downloaded),
                report.seconds,
            )
        return report

    # --- plan ------------------------------------------------------------------------------

    def _new_plan(self, spec: ModelSpec, cache_dir: Path) -> _Plan:
        return _Plan(
            spec=spec,
            include=tuple(dict.fromkeys([*self.include, *spec.include])),
            exclude=tuple(dict.fromkeys([*self.exclude, *spec.exclude])),
            cache=RepoCache(cache_dir, spec.repo_id, spec.repo_type),
        )

    def _plan(self, plan: _Plan, lock: LockFile | None, *, offline: bool) -> None:
        plan.started = time.monotonic()
        spec = plan.spec
        entry = lock.find(spec.repo_type, spec.repo_id, spec.revision) if lock else None
        pinned = ""
        if entry is not None:
            plan.commit, pinned = entry.commit, " (pinned by the lock file)"
        elif _is_commit(plan.ref):
            plan.commit = plan.ref
        elif offline:
            plan.commit = plan.cache.read_ref(plan.ref) or ""
            if not plan.commit:
                raise PrefetchFailed(
                    f"{plan.label}: not in the cache ({plan.cache.root}), and offline"
                )
        else:
            plan.commit = self._hub().resolve_commit(
                plan.label, spec.repo_id, spec.repo_type, plan.ref
            )
        if entry is not None and (set(entry.include), set(entry.exclude)) == (
            set(plan.include),
            set(plan.exclude),
        ):
            plan.files = list(entry.files)
        else:
            listing = plan.cache.read_tree(plan.commit)
            if listing is None and offline:
                listing = _walk_snapshot(plan.cache, plan.commit)
                if listing is None:
                    raise PrefetchFailed(
                        f"{plan.label}: commit {plan.commit} is not in the cache, and offline"
                    )
                logger.warning(
                    "%s: no cached listing; taking the snapshot folder as complete", plan.label
                )
            elif listing is None:
                listing = self._hub().list_files(
                    plan.label, spec.repo_id, spec.repo_type, plan.commit
                )
                plan.cache.write_tree(plan.commit, listing)
            plan.files = [
                f for f in listing if matches_patterns(f.path, plan.include, plan.exclude)
            ]
            if not plan.files:
                logger.warning("%s: no file matches the include / exclude patterns", plan.label)
        plan.missing = [f for f in plan.files if not plan.cache.has_file(plan.commit, f)]
        if offline and plan.missing:
            raise PrefetchFailed(
                f"{plan.label}: {len(plan.missing)} files missing from the cache, and offline: "
                + _sample(f.path for f in plan.missing)
            )
        size = sum(f.size for f in plan.files)
        todo = sum(f.size for f in plan.missing)
        logger.info(
            "%s: commit %s%s, %d files, %s; %s",
            plan.label,
            plan.commit[:12],
            pinned,
            len(plan.files),
            human_bytes(size),
            f"{human_bytes(todo)} to download" if plan.missing else "all in the cache",
        )

    def _check_disk_space(self, cache_dir: Path, plans: Sequence[_Plan]) -> None:
        needed = 0
        seen: set[Path] = set()
        for plan in plans:
            for file in plan.missing:
                blob = plan.cache.blob(file)
                if blob in seen:
                    continue
                seen.add(blob)
                try:
                    if blob.stat().st_size == file.size:
                        continue
                except OSError:
                    pass
                needed += file.size - plan.cache.partial_bytes(file)
        if not needed:
            return
        probe = cache_dir
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        free = shutil.disk_usage(probe).free
        if needed > free:
            raise NotEnoughDiskSpace(
                f"prefetch needs {human_bytes(needed)} more in {cache_dir}, but its file system "
                f"has {human_bytes(free)} free: give the cache volume more space"
            )

    # --- download --------------------------------------------------------------------------

    def _download(self, plans: Sequence[_Plan]) -> None:
        groups: dict[Path, list[tuple[_Plan, RepoFile]]] = {}
        for plan in plans:
            for file in plan.missing:
                groups.setdefault(plan.cache.blob(file), []).append((plan, file))
            plan.pending = len({plan.cache.blob(f) for f in plan.missing})
        if not groups:
            return
        tag_cache_dir(plans[0].cache.cache_dir)
        total = sum(members[0][1].size for members in groups.values())
        with Progress(total, interval=self.progress_interval) as progress:
            self._run_parallel(
                lambda members: self._fetch_blob(members, progress), list(groups.values())
            )

    def _fetch_blob(self, members: list[tuple[_Plan, RepoFile]], progress: Progress) -> None:
        plan, file = members[0]
        cache = plan.cache

        def on_bytes(count: int, *, network: bool) -> None:
            progress.add(count)
            if network:
                with self._plans_lock:
                    plan.downloaded += count

        with cache.blob_lock(file.etag, should_stop=self.should_stop):
            blob = cache.blob(file)
            if _size(blob) == file.size:
                progress.add(file.size)  # another process brought it while we waited
            else:
                partial = cache.take_partial(file)
                hub = self._hub()
                url = hub.file_url(plan.spec.repo_id, plan.spec.repo_type, plan.commit, file.path)
                hub.download(plan.label, url, file, partial, on_bytes)
                os.replace(partial, blob)
            for member_plan, member in members:
                member_plan.cache.link(member_plan.commit, member)
        for member_plan in {id(p): p for p, _ in members}.values():
            with self._plans_lock:
                member_plan.pending -= 1
                done = member_plan.pending == 0
            if done:
                self._finish(member_plan)

    def _finish(self, plan: _Plan) -> None:
        try:
            plan.cache.write_ref(plan.ref, plan.commit)
        except OSError as error:  # a read-only cache that is complete is fine
            logger.warning("%s: cannot record refs/%s: %s", plan.label, plan.ref, error)
        if plan.cache.blobs.is_dir() and (swept := plan.cache.sweep_partials()):
            logger.info("%s: removed %d partial files left by stopped downloads", plan.label, swept)
        plan.finished = time.monotonic()
        size = sum(f.size for f in plan.files)
        logger.info(
            "%s: commit %s, %d files, %s in %.2f s from %s",
            plan.label,
            plan.commit[:12],
            len(plan.files),
            human_bytes(size),
            plan.finished - plan.started,
            "the network" if plan.downloaded else "the cache",
        )

    # --- verify ----------------------------------------------------------------------------

    def _verify(self, plan: _Plan, lock: LockFile | None) -> None:
        plan.started = time.monotonic()
        spec = plan.spec
        entry = lock.find(spec.repo_type, spec.repo_id, spec.revision) if lock else None
        if entry is not None:
            plan.commit, listing = entry.commit, list(entry.files)
        else:
            plan.commit = plan.ref if _is_commit(plan.ref) else plan.cache.read_ref(plan.ref) or ""
            found = plan.cache.read_tree(plan.commit) if plan.commit else None
            if found is None and plan.commit:
                found = _walk_snapshot(plan.cache, plan.commit)
            if found is None:
                raise PrefetchFailed(
                    f"{plan.label}: not in the cache ({plan.cache.root}); nothing to verify"
                )
            listing = [f for f in found if matches_patterns(f.path, plan.include, plan.exclude)]
        plan.files = listing
        problems = [p for p in self._map(lambda f: _check_file(plan, f), listing) if p]
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

    # --- lock file -------------------------------------------------------------------------

    def _write_lock(self, lock: LockFile | None, plans: Sequence[_Plan]) -> None:
        assert self.lockfile is not None
        new = LockFile(self.lockfile, tuple(plan.lock_entry() for plan in plans))
        if lock is not None and lock.render() == new.render():
            return
        new.save()
        logger.info("lock file %s written (%d repos)", self.lockfile, len(plans))

    # --- helpers ---------------------------------------------------------------------------

    def _access(self) -> HubAccess:
        if self.access is None:
            from entrykit.hub.client import HubAccess

            self.access = HubAccess.from_environment()
        return self.access

    def _hub(self) -> HubClient:
        with self._client_lock:
            if self._client is None:
                from entrykit.hub.client import HubClient, RetryPolicy

                self._client = HubClient(
                    self._access(),
                    max_connections=self.max_workers,
                    policy=self.policy or RetryPolicy(),
                    should_stop=self.should_stop,
                    user_agent=_user_agent(),
                    max_parts=self.max_workers,
                )
            return self._client

    def _run_parallel(self, task: Callable[[_T], None], items: Sequence[_T]) -> None:
        """Run ``task`` on every item in threads; the first failure stops the others and is
        raised (ENOSPC as NotEnoughDiskSpace, other unexpected errors as PrefetchFailed)."""
        if not items:
            return
        with ThreadPoolExecutor(
            min(len(items), self.max_workers), thread_name_prefix="prefetch"
        ) as pool:
            futures: list[Future[None]] = [pool.submit(task, item) for item in items]
            wait(futures, return_when=FIRST_EXCEPTION)
            failed = next((f for f in futures if f.done() and f.exception() is not None), None)
            if failed is not None:
                self.abort.set()
                for future in futures:
                    future.cancel()
        if failed is not None:
            error = failed.exception()
            assert error is not None
            raise _as_entrykit_error(error) from error

    def _map(self, task: Callable[[_T], _R], items: Sequence[_T]) -> list[_R]:
        if len(items) < 2:
            return [task(item) for item in items]
        with ThreadPoolExecutor(
            min(len(items), self.max_workers), thread_name_prefix="verify"
        ) as pool:
            return list(pool.map(task, items))


def _as_entrykit_error(error: BaseException) -> EntrykitError:
    if isinstance(error, EntrykitError):
        return error
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return NotEnoughDiskSpace(f"the cache's file system is full: {error}")
    return PrefetchFailed(f"prefetch failed: {type(error).__name__}: {error}")


def _check_file(plan: _Plan, file: RepoFile) -> str:
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


def _walk_snapshot(cache: RepoCache, commit: str) -> list[RepoFile] | None:
    """The files of a snapshot folder with no cached listing, known by their blob names."""
    root = cache.root / "snapshots" / commit
    if not root.is_dir():
        return None
    files = []
    for path in sorted(root.rglob("*")):
        if path.is_dir():
            continue
        etag = Path(os.readlink(path)).name if path.is_symlink() else ""
        size = _size(path)
        sha256 = etag if len(etag) == 64 else None
        files.append(RepoFile(path.relative_to(root).as_posix(), max(size, 0), etag, sha256))
    return files


def _specs_from_lock(lock: LockFile | None) -> list[ModelSpec]:
    if lock is None:
        return []
    from entrykit.settings import ModelSpec

    return [
        ModelSpec(e.repo_id, e.repo_type, e.revision, e.include, e.exclude) for e in lock.entries
    ]


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


def _is_commit(revision: str) -> bool:
    return len(revision) == 40 and all(c in "0123456789abcdef" for c in revision)


def _sample(paths: Iterable[str], limit: int = 5) -> str:
    items = list(paths)
    text = ", ".join(items[:limit])
    return text + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def _user_agent() -> str:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    def known(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "unknown"

    return (
        f"entrykit/{known('entrykit')}; hf_hub/{known('huggingface_hub')}; "
        f"python/{platform.python_version()}"
    )
