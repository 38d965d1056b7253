"""The content of the local Hub: repos, commits, files with the ids the Hub reports for them,
faults to inject and the record of each request."""

from __future__ import annotations

import fnmatch
import hashlib
import random
from collections.abc import Mapping
from dataclasses import dataclass, field

LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n"
DEFAULT_LFS_THRESHOLD = 1 << 20  # files this large are stored in LFS unless told otherwise


def generated_bytes(size: int, seed: int = 0) -> bytes:
    """``size`` pseudo-random bytes, cheap to make: a 1 MiB random block tiled, each copy
    stamped with its index so that no two MiB are alike (a misplaced range shows up)."""
    block = random.Random(seed).randbytes(1 << 20)
    parts = []
    for index in range(0, size, 1 << 20):
        stamp = f"[{seed}:{index}]".encode()
        parts.append(stamp + block[len(stamp) :])
    return b"".join(parts)[:size]


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass(frozen=True)
class HubFile:
    """One file of a commit, with the ids the Hub reports for it."""

    path: str
    data: bytes
    lfs: bool
    sha1: str  # git blob id: of the content, or of the LFS pointer
    sha256: str | None  # LFS only

    @classmethod
    def build(cls, path: str, data: bytes, lfs: bool) -> HubFile:
        if not lfs:
            return cls(path, data, False, git_blob_sha1(data), None)
        sha256 = hashlib.sha256(data).hexdigest()
        pointer = LFS_POINTER.format(sha256=sha256, size=len(data)).encode()
        return cls(path, data, True, git_blob_sha1(pointer), sha256)

    @property
    def etag(self) -> str:
        """What huggingface_hub names the blob after: sha256 for LFS, else the git sha1."""
        return self.sha256 or self.sha1

    @property
    def pointer_size(self) -> int:
        return len(LFS_POINTER.format(sha256=self.sha256, size=len(self.data)).encode())


@dataclass
class HubRepo:
    repo_id: str
    repo_type: str
    private: bool = False
    gated: bool = False
    commits: dict[str, dict[str, HubFile]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> str | None:
        if revision in self.refs:
            return self.refs[revision]
        return revision if revision in self.commits else None


@dataclass
class Fault:
    """A fault applied to the next ``times`` requests whose path matches ``path`` (a glob)."""

    path: str
    times: int
    method: str | None = None
    origin: str | None = None  # "hub", "cdn" or None for both
    status: int | None = None
    retry_after: float | None = None
    cut_after: int | None = None  # bytes of body sent before the connection is cut
    stall: float | None = None  # seconds of silence (after cut_after bytes, if given)
    headers: Mapping[str, str] | None = None  # sent with ``status``
    body: bytes | None = None  # sent with status 200 instead of the real answer
    length_delta: int = 0  # Content-Length announces this many bytes more than the body

    def matches(self, method: str, path: str, origin: str) -> bool:
        return (
            self.times > 0
            and (self.method is None or self.method == method)
            and (self.origin is None or self.origin == origin)
            and fnmatch.fnmatchcase(path, self.path)
        )


@dataclass
class RequestRecord:
    method: str
    path: str  # unquoted, without the query
    query: str
    origin: str  # "hub" or "cdn"
    headers: Mapping[str, str]
    status: int  # 0 until the answer is sent
    at: float  # when the request arrived
