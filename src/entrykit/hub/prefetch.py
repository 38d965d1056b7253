"""Prefetch Hugging Face snapshots into the huggingface_hub cache: the run.

A run has three phases:

1. plan, repos side by side (``planning.py``): each spec's commit, its selected files, and
   which of them the cache lacks.
2. check the bytes still missing against the free space of the cache's file system (41).
3. download the missing blobs, files of all repos in one pool of ``hf_max_workers`` threads,
   each under huggingface_hub's own blob lock, resuming partial files, checking every byte
   against the listing (``download.py``), then linking ``snapshots/<commit>/<path>`` and
   writing ``refs/<revision>`` once the repo is complete (and placing its files in its
   ``--local-dir``, ``localdir.py``).

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
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from entrykit.errors import (
    ConfigError,
    EntrykitError,
    NotEnoughDiskSpace,
    PrefetchFailed,
    RepoRefused,
)
from entrykit.hub.arguments import (
    check_api_arguments,
    check_local_dirs,
    full_path,
    local_dir_setting,
    patterns,
)
from entrykit.hub.cache import RepoCache, tag_cache_dir
from entrykit.hub.files import ListingMismatch, RepoFile
from entrykit.hub.lockfile import LockFile, read_lock
from entrykit.hub.planning import RepoPlan, plan_repo
from entrykit.hub.progress import Progress, human_bytes, plural
from entrykit.hub.report import PrefetchReport, RepoReport
from entrykit.hub.space import check_disk_space
from entrykit.hub.stop import ShouldStop

if TYPE_CHECKING:
    from entrykit.hub.access import HubAccess
    from entrykit.hub.http import HubHttp
    from entrykit.hub.retry import RetryPolicy
    from entrykit.settings import Settings
    from entrykit.specs import ModelSpec

__all__ = ["PrefetchReport", "RepoReport", "prefetch", "prefetch_models"]

logger = logging.getLogger("entrykit.prefetch")

_T = TypeVar("_T")
_R = TypeVar("_R")

PROGRESS_INTERVAL = 10.0  # seconds between progress lines when stderr is not a terminal


@dataclass(frozen=True)
class RunOptions:
    """How a run behaves, beside what it fetches."""

    verify: bool = False
    offline: bool = False
    dry_run: bool = False
    force: bool = False


def prefetch_models(
    settings: Settings,
    *,
    verify: bool = False,
    offline: bool = False,
    dry_run: bool = False,
    force: bool = False,
    cache_dir: Path | None = None,
    cancel: threading.Event | None = None,
    access: HubAccess | None = None,
    policy: RetryPolicy | None = None,
    deadline: float | None = None,
    progress_interval: float = PROGRESS_INTERVAL,
) -> PrefetchReport:
    """Download (or, with ``verify``, check) ``settings.hf_models`` into the Hub cache.

    ``offline`` (or ``HF_HUB_OFFLINE=1``) uses the cache only; ``dry_run`` lists what would
    be downloaded and writes nothing; ``force`` downloads again what is cached;
    ``cache_dir`` overrides ``HF_HUB_CACHE``. ``access`` overrides where the Hub, the cache
    and the token are (default: the environment, as huggingface_hub reads it); ``deadline``
    bounds the whole run in seconds. ``settings.hf_local_dir`` needs exactly one repo.

    Raises ConfigError (10) for a local dir with several repos or a bad ``HF_ENDPOINT``;
    RepoRefused (42) for a repo or revision that is missing, gated or refused;
    NotEnoughDiskSpace (41) when the cache's file system cannot hold the missing bytes;
    PrefetchFailed (40) for anything else, including ``verify`` finding bad files.
    """
    local = settings.hf_local_dir
    return _Run(
        specs=settings.hf_models,
        local_dir=full_path(settings.cwd, local),
        local_dir_name=f"{local_dir_setting(settings)}: {local}",
        include=settings.hf_include,
        exclude=settings.hf_exclude,
        lockfile=full_path(settings.cwd, settings.hf_lockfile),
        max_workers=settings.hf_max_workers,
        cancel=cancel,
        access=access,
        cache_dir=full_path(settings.cwd, cache_dir),
        policy=policy,
        deadline=deadline,
        progress_interval=progress_interval,
    ).execute(RunOptions(verify, offline, dry_run, force))


def prefetch(
    *specs: str,
    include: str | Sequence[str] = (),
    exclude: str | Sequence[str] = (),
    lockfile: str | os.PathLike[str] | None = None,
    verify: bool = False,
    offline: bool = False,
    max_workers: int = 8,
    local_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    dry_run: bool = False,
    force: bool = False,
) -> PrefetchReport:
    """Prefetch repos from a build script: ``prefetch("acme/encoder@v2", "dataset:acme/eval")``.

    Specs are ``[TYPE:][OWNER/]NAME[@REVISION]``; ``include`` / ``exclude`` are glob patterns
    (one, or a list) applied to every repo; ``local_dir`` (one spec only) also places the
    files there. Raises what `prefetch_models` raises, ConfigError for a bad spec, ValueError
    for ``max_workers`` outside 1-64 or an empty path, TypeError for a value of a wrong type.
    """
    from entrykit.specs import ModelSpec

    check_api_arguments(max_workers, lockfile=lockfile, local_dir=local_dir, cache_dir=cache_dir)
    parsed = tuple(ModelSpec.parse(spec) for spec in specs)
    return _Run(
        specs=parsed,
        local_dir=full_path(Path.cwd(), local_dir),
        local_dir_name=f"local_dir: {local_dir}",
        include=patterns("include", include),
        exclude=patterns("exclude", exclude),
        lockfile=full_path(Path.cwd(), lockfile),
        max_workers=max_workers,
        cache_dir=full_path(Path.cwd(), cache_dir),
    ).execute(RunOptions(verify, offline, dry_run, force))


class _Run:
    def __init__(
        self,
        *,
        specs: Sequence[ModelSpec],
        local_dir: Path | None = None,
        local_dir_name: str = "",
        include: tuple[str, ...],
        exclude: tuple[str, ...],
        lockfile: Path | None,
        max_workers: int,
        cancel: threading.Event | None = None,
        access: HubAccess | None = None,
        cache_dir: Path | None = None,
        policy: RetryPolicy | None = None,
        deadline: float | None = None,
        progress_interval: float = PROGRESS_INTERVAL,
    ) -> None:
        self.specs = specs
        self.local_dir = local_dir
        self.local_dir_name = local_dir_name
        self.include = include
        self.exclude = exclude
        self.lockfile = lockfile
        self.max_workers = max(1, max_workers)
        self.access = access
        self.cache_dir = cache_dir
        self.policy = policy
        self.progress_interval = progress_interval
        self.abort = threading.Event()
        self.should_stop = ShouldStop(
            self.abort, cancel, deadline=None if deadline is None else time.monotonic() + deadline
        )
        self.started = time.monotonic()
        self._http: HubHttp | None = None
        self._http_lock = threading.Lock()
        self._plans_lock = threading.Lock()

    def execute(self, options: RunOptions) -> PrefetchReport:
        if options.force and (options.offline or self._access().offline):
            raise ConfigError(
                "force and offline contradict each other: force downloads what is cached "
                "again, offline (--offline or HF_HUB_OFFLINE) downloads nothing; drop one"
            )
        lock = read_lock(self.lockfile) if self.lockfile is not None else None
        given = self._with_local_dir(list(self.specs) or (lock.specs() if lock else []))
        specs = list(dict.fromkeys(given))  # a spec given twice is fetched once
        check_local_dirs(specs)
        if not specs:
            logger.info("no repos to prefetch")
            return PrefetchReport((), 0.0, self.lockfile, options.verify)
        access = self._access()
        plans = [self._new_plan(spec, access.cache_dir) for spec in specs]
        offline = options.offline or access.offline
        try:
            if options.verify:
                from entrykit.hub.verify import verify_repo

                self._run_parallel(lambda plan: verify_repo(plan, lock, self._map), plans)
            else:
                refused: dict[int, RepoRefused] = {}

                def plan_one(plan: RepoPlan) -> None:
                    try:
                        plan_repo(plan, self._hub, lock, offline=offline, force=options.force)
                    except RepoRefused as error:  # the others go on: name every refused repo
                        refused[id(plan)] = error

                self._run_parallel(plan_one, plans)
                if refused:
                    raise _all_refused([refused[id(p)] for p in plans if id(p) in refused])
                if options.dry_run:
                    for plan in plans:
                        plan.finished = time.monotonic()
                else:
                    self._fetch_and_finish(plans, lock, offline=offline, force=options.force)
        finally:
            if self._http is not None:
                self._http.close()
        return self._report(plans, given, options)

    def _with_local_dir(self, specs: list[ModelSpec]) -> list[ModelSpec]:
        """``specs`` with the run's local dir (``--local-dir``) set on its only repo."""
        if self.local_dir is None:
            return specs
        repos = list(dict.fromkeys(specs))
        if not repos:
            where = "" if self.lockfile is None else f", and the lock file {self.lockfile} has none"
            raise ConfigError(
                f"{self.local_dir_name} needs a repo to place: give one (SPEC or "
                f"ENTRYKIT_HF_MODELS){where}"
            )
        if len(repos) != 1:
            source = "" if self.specs else f" (from the lock file {self.lockfile})"
            raise ConfigError(
                f"{self.local_dir_name} takes exactly one repo, not {len(repos)}{source}; "
                "give each repo its own local_dir in [[models]] tables"
            )
        return [spec._replace(local_dir=self.local_dir) for spec in specs]

    def _fetch_and_finish(
        self, plans: list[RepoPlan], lock: LockFile | None, *, offline: bool, force: bool
    ) -> None:
        check_disk_space(plans, offline=offline)
        if not offline:
            self._download(plans, force=force)
        for plan in plans:
            if not plan.missing:
                self._finish(plan, force=force)
        if self.lockfile is not None:
            self._write_lock(lock, plans)

    def _report(
        self, plans: list[RepoPlan], given: list[ModelSpec], options: RunOptions
    ) -> PrefetchReport:
        reports = {plan.spec: plan.report(dry_run=options.dry_run) for plan in plans}
        report = PrefetchReport(
            tuple(reports[spec] for spec in given),  # one per spec given, in order
            time.monotonic() - self.started,
            self.lockfile,
            options.verify,
            options.dry_run,
        )
        if options.dry_run:
            todo = sum(size for repo in report.repos for _, size in repo.to_download)
            count = sum(len(repo.to_download) for repo in report.repos)
            logger.info(
                "dry run: %s, %s would be downloaded", plural(count, "file"), human_bytes(todo)
            )
        elif not options.verify:
            logger.info(
                "prefetch done: %s, %s downloaded in %.2f s",
                plural(len(plans), "repo"),
                human_bytes(report.downloaded),
                report.seconds,
            )
        return report

    def _new_plan(self, spec: ModelSpec, cache_dir: Path) -> RepoPlan:
        return RepoPlan(
            spec=spec,
            include=tuple(dict.fromkeys([*self.include, *spec.include])),
            exclude=tuple(dict.fromkeys([*self.exclude, *spec.exclude])),
            cache=RepoCache(cache_dir, spec.repo_id, spec.repo_type),
            local_dir=spec.local_dir,
        )

    # --- download --------------------------------------------------------------------------

    def _download(self, plans: Sequence[RepoPlan], *, force: bool) -> None:
        groups: dict[Path, list[tuple[RepoPlan, RepoFile]]] = {}
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
                lambda members: self._fetch_blob(members, progress, force=force),
                list(groups.values()),
            )

    def _fetch_blob(
        self, members: list[tuple[RepoPlan, RepoFile]], progress: Progress, *, force: bool
    ) -> None:
        from entrykit.hub.api import file_url
        from entrykit.hub.download import download
        from entrykit.hub.reuse import take_from_local_dirs

        plan, file = members[0]
        cache = plan.cache

        def on_bytes(count: int, *, network: bool) -> None:
            progress.add(count)
            if network:
                with self._plans_lock:
                    plan.downloaded += count

        with cache.blob_lock(file.etag, should_stop=self.should_stop):
            blob = cache.folder("blobs") / file.etag  # refuses a symlinked blobs folder
            if not force and cache.has_blob(file):
                progress.add(file.size)  # another process brought it while we waited
            else:
                partial = cache.take_partial(file, fresh=force)
                http = self._hub()
                url = file_url(http, plan.spec.repo_id, plan.spec.repo_type, plan.commit, file.path)
                try:
                    taken = None if force else take_from_local_dirs(members, partial)
                    if taken is None:
                        download(
                            http,
                            plan.label,
                            url,
                            file,
                            partial,
                            on_bytes,
                            max_parts=self.max_workers,
                        )
                    else:
                        progress.add(file.size)
                        with self._plans_lock:
                            taken.reused += 1
                except ListingMismatch:
                    for member_plan, _ in members:  # the cached listing lied: ask again
                        if member_plan.cached_listing:
                            member_plan.cache.drop_tree(member_plan.commit)
                    raise
                os.replace(partial, blob)
            for member_plan, member in members:
                member_plan.cache.link(member_plan.commit, member)
        for member_plan in {id(p): p for p, _ in members}.values():
            with self._plans_lock:
                member_plan.pending -= 1
                done = member_plan.pending == 0
            if done:
                self._finish(member_plan, force=force)

    def _finish(self, plan: RepoPlan, *, force: bool = False) -> None:
        try:
            if plan.fetched_listing is not None:  # every file is in, as listed: keep it
                plan.cache.write_tree(plan.commit, plan.fetched_listing)
            plan.cache.write_ref(plan.ref, plan.commit)
        except OSError as error:  # a read-only cache that is complete is fine
            logger.warning("%s: cannot record refs/%s: %s", plan.label, plan.ref, error)
        if plan.cache.blobs.is_dir() and (swept := plan.cache.sweep_partials()):
            logger.info(
                "%s: removed %s left by stopped downloads",
                plan.label,
                plural(swept, "partial file"),
            )
        if plan.reused:
            logger.info(
                "%s: %s taken from %s (left by hf download) instead of the network",
                plan.label,
                plural(plan.reused, "file"),
                plan.local_dir,
            )
        if plan.local_dir is not None:
            from entrykit.hub.localdir import place_in_local_dir

            placed = place_in_local_dir(plan, force=force, should_stop=self.should_stop)
            logger.info("%s: %s placed in %s", plan.label, plural(placed, "file"), plan.local_dir)
        plan.finished = time.monotonic()
        logger.info(
            "%s: commit %s, %s, %s in %.2f s from %s",
            plan.label,
            plan.commit[:12],
            plural(len(plan.files), "file"),
            human_bytes(sum(f.size for f in plan.files)),
            plan.finished - plan.started,
            "the network" if plan.downloaded else "the cache",
        )

    def _write_lock(self, lock: LockFile | None, plans: Sequence[RepoPlan]) -> None:
        assert self.lockfile is not None
        new = LockFile(self.lockfile, tuple(plan.lock_entry() for plan in plans))
        if lock is not None and lock.render() == new.render():
            return
        new.save()
        logger.info("lock file %s written (%s)", self.lockfile, plural(len(plans), "repo"))

    # --- helpers ---------------------------------------------------------------------------

    def _access(self) -> HubAccess:
        if self.access is None:
            from entrykit.hub.access import HubAccess

            self.access = HubAccess.from_environment(self.cache_dir)
        elif self.cache_dir is not None:
            from dataclasses import replace

            self.access = replace(self.access, cache_dir=self.cache_dir)
        return self.access

    def _hub(self) -> HubHttp:
        with self._http_lock:
            if self._http is None:
                from entrykit.hub.access import user_agent
                from entrykit.hub.http import HubHttp
                from entrykit.hub.retry import RetryPolicy

                self._http = HubHttp(
                    self._access(),
                    max_connections=self.max_workers,
                    policy=self.policy or RetryPolicy(),
                    should_stop=self.should_stop,
                    user_agent=user_agent(),
                )
            return self._http

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


def _all_refused(errors: list[RepoRefused]) -> RepoRefused:
    if len(errors) == 1:
        return errors[0]
    return RepoRefused(f"{len(errors)} repos refused: " + "; ".join(map(str, errors)))
