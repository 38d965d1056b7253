"""entrykit: the container entrypoint for Python services.

Load secrets, wait for dependencies, apply migrations and prefetch model snapshots, then
exec the service's command so that it becomes PID 1. The Python API is :func:`run` (what
``entrykit run`` does) and :func:`prefetch` (for build scripts); heavy modules are imported
only when a function needs them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from entrykit.errors import EntrykitError

if TYPE_CHECKING:
    from entrykit.hub.report import PrefetchReport, RepoReport

__version__ = "0.1.0"
__all__ = ["EntrykitError", "PrefetchReport", "RepoReport", "__version__", "prefetch", "run"]


def __getattr__(name: str) -> object:
    # The report types live with the prefetch step, which only a prefetch should import.
    if name in ("PrefetchReport", "RepoReport"):
        from entrykit.hub import report

        return getattr(report, name)
    raise AttributeError(f"module 'entrykit' has no attribute {name!r}")


def run(command: Sequence[str] | None = None, **options: object) -> None:
    """Run the steps as ``entrykit run`` does, then exec ``command`` (never returns then).

    ``options`` are settings by name (``migrate="1"``, ``wait_timeout=30``, ...) and win
    over the environment and the config file. Without a command it returns after the steps.
    Raises the failing step's EntrykitError.
    """
    from entrykit.options import named_as_typed
    from entrykit.pipeline import run as run_pipeline
    from entrykit.settings import Settings

    as_typed = {f"--{name.replace('_', '-')}": name for name in options}  # wait_timeout=...
    run_pipeline(named_as_typed(lambda: Settings.load(options), as_typed), command)


def prefetch(
    *specs: str,
    include: str | Sequence[str] = (),
    exclude: str | Sequence[str] = (),
    lockfile: str | None = None,
    verify: bool = False,
    offline: bool = False,
    max_workers: int = 8,
    local_dir: str | None = None,
    cache_dir: str | None = None,
    dry_run: bool = False,
    force: bool = False,
) -> PrefetchReport:
    """Download Hugging Face snapshots into the cache, for build scripts.

    ``prefetch("acme/encoder@v2", "dataset:acme/eval", include=["*.safetensors"])`` (a
    single pattern may be given as a string);
    ``prefetch("acme/encoder", local_dir="/models/encoder")`` also places its files in a
    plain folder. Each report's ``folder`` is where the files are.
    Raises ConfigError (bad spec), RepoRefused, NotEnoughDiskSpace or PrefetchFailed;
    ValueError for ``max_workers`` outside 1-64 or an empty path.
    """
    from entrykit.hub.prefetch import prefetch as prefetch_snapshots

    return prefetch_snapshots(
        *specs,
        include=include,
        exclude=exclude,
        lockfile=lockfile,
        verify=verify,
        offline=offline,
        max_workers=max_workers,
        local_dir=local_dir,
        cache_dir=cache_dir,
        dry_run=dry_run,
        force=force,
    )
