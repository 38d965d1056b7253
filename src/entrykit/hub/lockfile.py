"""The prefetch lock file: what each repo spec resolved to, file by file.

JSON, one entry per spec (type, repo, requested revision)::

    {"version": 1,
     "repos": [{"repo": "acme/encoder", "type": "model", "revision": "main",
                "commit": "<40 hex>", "include": ["*.json"], "exclude": [],
                "files": [{"path": "config.json", "size": 519, "blob_id": "<git sha1>"},
                          {"path": "model.safetensors", "size": 90868376,
                           "blob_id": "<git sha1 of the LFS pointer>", "sha256": "<64 hex>"}]}]}

An entry pins its spec to ``commit``; when its patterns equal the spec's, its file list is
used as is, so a warm cache is checked without any request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from entrykit.errors import PrefetchFailed
from entrykit.hub.cache import write_atomic
from entrykit.hub.files import RepoFile

LOCK_VERSION = 1


@dataclass(frozen=True)
class LockEntry:
    repo_id: str
    repo_type: str
    revision: str | None  # as requested; None: the default branch
    commit: str
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    files: tuple[RepoFile, ...]

    @property
    def key(self) -> tuple[str, str, str | None]:
        return (self.repo_type, self.repo_id, self.revision)

    def to_json(self) -> dict[str, object]:
        files: list[dict[str, object]] = []
        for file in sorted(self.files, key=lambda f: f.path):
            item: dict[str, object] = {
                "path": file.path,
                "size": file.size,
                "blob_id": file.blob_id,
            }
            if file.sha256 is not None:
                item["sha256"] = file.sha256
            files.append(item)
        return {
            "repo": self.repo_id,
            "type": self.repo_type,
            "revision": self.revision,
            "commit": self.commit,
            "include": list(self.include),
            "exclude": list(self.exclude),
            "files": files,
        }

    @classmethod
    def from_json(cls, item: dict[str, object]) -> LockEntry:
        files = item["files"]
        assert isinstance(files, list)
        revision = item.get("revision")
        return cls(
            repo_id=str(item["repo"]),
            repo_type=str(item.get("type", "model")),
            revision=None if revision is None else str(revision),
            commit=str(item["commit"]),
            include=tuple(str(p) for p in item.get("include", []) or []),  # type: ignore[attr-defined]
            exclude=tuple(str(p) for p in item.get("exclude", []) or []),  # type: ignore[attr-defined]
            files=tuple(
                RepoFile(
                    path=str(f["path"]),
                    size=int(f["size"]),
                    blob_id=str(f["blob_id"]),
                    sha256=None if f.get("sha256") is None else str(f["sha256"]),
                )
                for f in files
            ),
        )


@dataclass(frozen=True)
class LockFile:
    path: Path
    entries: tuple[LockEntry, ...]

    def find(self, repo_type: str, repo_id: str, revision: str | None) -> LockEntry | None:
        for entry in self.entries:
            if entry.key == (repo_type, repo_id, revision):
                return entry
        return None

    def render(self) -> str:
        body = {"version": LOCK_VERSION, "repos": [e.to_json() for e in self.entries]}
        return json.dumps(body, indent=2) + "\n"

    def save(self) -> None:
        """Write the lock file atomically; raises PrefetchFailed when it cannot be written."""
        try:
            write_atomic(self.path, self.render())
        except OSError as error:
            raise PrefetchFailed(f"cannot write the lock file {self.path}: {error}") from error


def read_lock(path: Path) -> LockFile | None:
    """The lock file at ``path``, or None when there is none; PrefetchFailed when unreadable."""
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        return None
    except OSError as error:
        raise PrefetchFailed(f"cannot read the lock file {path}: {error}") from error
    try:
        data = json.loads(text)
        if data.get("version") != LOCK_VERSION:
            raise ValueError(f"unknown version {data.get('version')!r}")
        entries = tuple(LockEntry.from_json(item) for item in data["repos"])
    except (ValueError, KeyError, TypeError, AttributeError, AssertionError) as error:
        raise PrefetchFailed(f"the lock file {path} is not valid: {error}") from error
    return LockFile(path, entries)
