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
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from entrykit.errors import ConfigError, PrefetchFailed
from entrykit.hub.cache import write_atomic
from entrykit.hub.files import RepoFile
from entrykit.hub.names import (
    MAX_FILE_SIZE,
    clash,
    is_blob_id,
    is_commit,
    is_sha256,
    path_problem,
    shown,
)

if TYPE_CHECKING:
    from entrykit.specs import ModelSpec

LOCK_VERSION = 1
MAX_LOCK_BYTES = 256_000_000  # a million files take about 200 MB; more is not a lock file
DEFAULT_BRANCH = "main"  # huggingface_hub's DEFAULT_REVISION: what no revision means


@dataclass(frozen=True)
class LockEntry:
    repo_id: str
    repo_type: str
    revision: str | None  # as requested; written as resolved ("main" for the default branch)
    commit: str
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    files: tuple[RepoFile, ...]

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.repo_type, self.repo_id, self.revision or DEFAULT_BRANCH)

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
    def from_json(cls, item: object, where: str) -> LockEntry:
        """One entry of ``repos``, every field checked as a Hub answer would be; raises
        ValueError naming the field (``repos[0].files[2].size``) and what is wrong."""
        from entrykit.specs import REPO_TYPES, ModelSpec, check_revision

        fields = _object(item, where)
        repo_type = fields.get("type", "model")
        if repo_type not in REPO_TYPES:
            raise ValueError(f"{where}.type: {shown(repo_type)} is not one of {REPO_TYPES}")
        repo_id = fields.get("repo")
        if not isinstance(repo_id, str) or "@" in repo_id or ":" in repo_id:
            raise ValueError(f"{where}.repo: {shown(repo_id)} is not OWNER/NAME")
        try:
            ModelSpec.parse(f"{repo_type}:{repo_id}")
        except ConfigError:
            raise ValueError(f"{where}.repo: {shown(repo_id)} is not OWNER/NAME") from None
        revision = fields.get("revision")
        if revision is not None and (
            not isinstance(revision, str) or not revision or check_revision(revision)
        ):
            raise ValueError(f"{where}.revision: {shown(revision)} is not a branch, tag or commit")
        commit = fields.get("commit")
        if not isinstance(commit, str) or not is_commit(commit):
            raise ValueError(f"{where}.commit: {shown(commit)} is not 40 lowercase hex digits")
        files = fields.get("files")
        if not isinstance(files, list):
            raise ValueError(f"{where}.files: {shown(files)} is not a list of files")
        checked = tuple(_file(f, f"{where}.files[{n}]") for n, f in enumerate(files))
        paths = [f.path for f in checked]
        if len(set(paths)) != len(paths):
            twice = next(p for p in paths if paths.count(p) > 1)
            raise ValueError(f"{where}.files: {twice!r} is listed twice")
        if (both := clash(paths)) is not None:
            raise ValueError(f"{where}.files: {both!r} is both a file and a folder")
        return cls(
            repo_id=repo_id,
            repo_type=repo_type,
            revision=revision,
            commit=commit,
            include=_patterns(fields.get("include"), f"{where}.include"),
            exclude=_patterns(fields.get("exclude"), f"{where}.exclude"),
            files=checked,
        )


def _object(item: object, where: str) -> dict[str, object]:
    if not isinstance(item, dict):
        raise ValueError(f"{where}: {shown(item)} is not an object")
    return item


def _patterns(value: object, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise ValueError(f"{where}: {shown(value)} is not a list of patterns")
    return tuple(value)


def _file(item: object, where: str) -> RepoFile:
    fields = _object(item, where)
    path = fields.get("path")
    problem = path_problem(path) if isinstance(path, str) else "not a path"
    if problem or not isinstance(path, str):
        raise ValueError(f"{where}.path: {shown(path)}: {problem}")
    size = fields.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_FILE_SIZE:
        raise ValueError(f"{where}.size: {shown(size)} is not a size in bytes")
    blob_id = fields.get("blob_id")
    if not isinstance(blob_id, str) or not is_blob_id(blob_id):
        raise ValueError(f"{where}.blob_id: {shown(blob_id)} is not a git blob id")
    sha256 = fields.get("sha256")
    if sha256 is not None and (not isinstance(sha256, str) or not is_sha256(sha256)):
        raise ValueError(f"{where}.sha256: {shown(sha256)} is not 64 lowercase hex digits")
    return RepoFile(path=path, size=size, blob_id=blob_id, sha256=sha256)


@dataclass(frozen=True)
class LockFile:
    path: Path
    entries: tuple[LockEntry, ...]

    def find(self, repo_type: str, repo_id: str, revision: str | None) -> LockEntry | None:
        """The entry of a spec; no revision and ``main`` are one (huggingface_hub's default)."""
        for entry in self.entries:
            if entry.key == (repo_type, repo_id, revision or DEFAULT_BRANCH):
                return entry
        return None

    def specs(self) -> list[ModelSpec]:
        """The specs the lock file holds, in its order (``prefetch --lock FILE`` alone)."""
        from entrykit.specs import ModelSpec

        return [
            ModelSpec(e.repo_id, e.repo_type, e.revision, e.include, e.exclude)
            for e in self.entries
        ]

    def render(self) -> str:
        body = {"version": LOCK_VERSION, "repos": [e.to_json() for e in self.entries]}
        return json.dumps(body, indent=2) + "\n"

    def save(self) -> None:
        """Write the lock file atomically; raises PrefetchFailed when it cannot be written."""
        try:
            write_atomic(self.path, self.render())
        except OSError as error:
            raise PrefetchFailed(f"cannot write the lock file {self.path}: {error}") from error


def _read_regular_file(path: Path) -> str:
    """The text of ``path`` if it is a regular file (links followed) of at most
    ``MAX_LOCK_BYTES``; ValueError saying what it is otherwise. A FIFO is opened without
    blocking and never read: a lock file must not hang the start."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            raise ValueError(f"is not a regular file but {_kind(mode)}: give a JSON file")
        with os.fdopen(os.dup(descriptor), "rb") as stream:
            data = stream.read(MAX_LOCK_BYTES + 1)
    finally:
        os.close(descriptor)
    if len(data) > MAX_LOCK_BYTES:
        raise ValueError(f"is larger than {MAX_LOCK_BYTES // 1_000_000} MB: not a lock file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("is not valid: not UTF-8 text") from None


def _kind(mode: int) -> str:
    kinds = {
        stat.S_ISDIR: "a folder",
        stat.S_ISFIFO: "a FIFO",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
        stat.S_ISSOCK: "a socket",
    }
    return next((name for test, name in kinds.items() if test(mode)), "not a file")


def read_lock(path: Path) -> LockFile | None:
    """The lock file at ``path``, or None when there is none. A lock file is user input
    (often edited by hand): every field is checked as a Hub answer is, before anything uses
    it. Raises PrefetchFailed when it is unreadable or not valid, naming the field."""
    try:
        text = _read_regular_file(path)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise PrefetchFailed(f"cannot read the lock file {path}: {error}") from error
    except ValueError as error:
        raise PrefetchFailed(f"the lock file {path} {error}") from None
    try:
        data = _object(json.loads(text), "the top level")
        if data.get("version") != LOCK_VERSION:
            raise ValueError(f"version: {shown(data.get('version'))} is not {LOCK_VERSION}")
        repos = data.get("repos")
        if not isinstance(repos, list):
            raise ValueError(f"repos: {shown(repos)} is not a list of repos")
        entries = tuple(LockEntry.from_json(item, f"repos[{n}]") for n, item in enumerate(repos))
    except ValueError as error:  # json.JSONDecodeError is one too
        raise PrefetchFailed(f"the lock file {path} is not valid: {error}") from None
    keys = [entry.key for entry in entries]
    if len(set(keys)) != len(keys):
        twice = next(k for k in keys if keys.count(k) > 1)
        raise PrefetchFailed(
            f"the lock file {path} is not valid: {twice[0]} {twice[1]} at revision "
            f"{twice[2]} is listed twice"
        )
    return LockFile(path, entries)
