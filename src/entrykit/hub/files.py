"""A file of a repo at one commit, and the check of its bytes against what the Hub listed."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from entrykit.errors import PrefetchFailed


class ListingMismatch(PrefetchFailed):
    """The bytes served are not what the listing says (size or hash): the listing or the
    server is wrong, and a cached listing must not be trusted again."""


@dataclass(frozen=True)
class RepoFile:
    """A file of a repo at one commit, as the tree listing describes it."""

    path: str
    size: int
    blob_id: str  # git blob sha1 (of the LFS pointer for LFS files)
    sha256: str | None = None  # LFS files only
    xet_hash: str | None = None  # when the Hub stores the file in Xet (kept for huggingface_hub)

    @property
    def etag(self) -> str:
        """The blob's name in the cache: what the Hub's ETag / X-Linked-Etag carries."""
        return self.sha256 or self.blob_id


class FileHasher:
    """Checks bytes against a `RepoFile`: sha256 for LFS files, the git blob sha1 otherwise."""

    def __init__(self, file: RepoFile) -> None:
        self.file = file
        self.reset()

    def reset(self) -> None:
        if self.file.sha256 is not None:
            self._hash = hashlib.sha256()
        else:
            self._hash = hashlib.sha1(b"blob %d\0" % self.file.size)

    def update(self, data: bytes | memoryview) -> None:
        self._hash.update(data)

    def update_from(self, path: Path, length: int) -> None:
        if length <= 0:
            return  # nothing to read: spare the open (thousands of small files)
        with path.open("rb") as stream:
            while length > 0:
                chunk = stream.read(min(length, 1 << 20))
                if not chunk:
                    break
                self._hash.update(chunk)
                length -= len(chunk)

    def matches(self) -> bool:
        expected = self.file.sha256 or self.file.blob_id
        return self._hash.hexdigest() == expected
