"""What a prefetch came to: one `RepoReport` per spec, gathered in a `PrefetchReport`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal


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
    local_dir: Path | None = None  # where the files were also placed as plain files
    to_download: tuple[tuple[str, int], ...] = ()  # dry run: (path, bytes) still missing

    @property
    def folder(self) -> Path:
        """What a script wants: the local folder when there is one, else the snapshot."""
        return self.local_dir or self.snapshot


@dataclass(frozen=True)
class PrefetchReport:
    """The result of `prefetch_models`: one `RepoReport` per spec, in the order given."""

    repos: tuple[RepoReport, ...]
    seconds: float
    lockfile: Path | None = None
    verified: bool = False
    dry_run: bool = False

    @property
    def downloaded(self) -> int:
        unique = {id(repo): repo for repo in self.repos}  # a spec given twice: one report
        return sum(repo.downloaded for repo in unique.values())

    def stdout_lines(self) -> list[str]:
        """What ``entrykit prefetch`` prints on stdout, for scripts: each repo's folder
        (``DIR=$(entrykit prefetch org/name)``); a dry run's ``BYTES SPEC PATH`` lines still
        to download; nothing for a verify."""
        if self.dry_run:
            return [f"{size}\t{r.spec}\t{path}" for r in self.repos for path, size in r.to_download]
        return [] if self.verified else [str(repo.folder) for repo in self.repos]
