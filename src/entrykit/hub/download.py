"""One file's bytes into its partial file: resumed, in parallel ranges when large, checked.

Every byte is hashed as it arrives (sha256 for LFS files, the git blob sha1 otherwise) and
compared with the listing at the end. A body that announces a length other than the one the
listing implies, or that runs past it, is PrefetchFailed at once: waiting will not fix it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from entrykit.hub.cache import remove_sidecar
from entrykit.hub.files import FileHasher, ListingMismatch, RepoFile
from entrykit.hub.http import HubHttp, StorageRefused
from entrykit.hub.nofollow import open_no_follow
from entrykit.hub.parts import (
    RangedDownload,
    RangesIgnored,
    check_length,
    load_parts,
    plan_parts,
)
from entrykit.hub.retry import RangeRejected

if TYPE_CHECKING:
    from entrykit.hub.parts import OnBytes

logger = logging.getLogger("entrykit.prefetch")


def download(
    http: HubHttp,
    label: str,
    url: str,
    file: RepoFile,
    partial: Path,
    on_bytes: OnBytes,
    *,
    max_parts: int,
) -> None:
    """Fill ``partial`` with ``file``'s bytes, resuming from what it holds, and check them.

    Raises PrefetchFailed when the bytes stay wrong, RepoRefused on 401/403/404.
    """
    _truncate(partial, keep=True)
    restarted = False
    parts = load_parts(partial, file.size)
    if parts is None:
        remove_sidecar(partial)
        parts = plan_parts(partial.stat().st_size, file.size, max_parts)
    if parts is not None:
        on_bytes(sum(p.done for p in parts), network=False)
        try:
            ranged = RangedDownload(
                http, label, url, file, partial, parts, on_bytes, connections=max_parts
            )
            if ranged.run().matches():
                remove_sidecar(partial)
                return
            restarted = True  # wrong bytes: start over once, in one piece
        except RangesIgnored:
            pass  # a server without ranges: one piece from the start
        on_bytes(-sum(p.done for p in parts), network=False)
        remove_sidecar(partial)
        _truncate(partial)
    _download_in_one_piece(http, label, url, file, partial, on_bytes, restarted=restarted)


def _download_in_one_piece(
    http: HubHttp,
    label: str,
    url: str,
    file: RepoFile,
    partial: Path,
    on_bytes: OnBytes,
    *,
    restarted: bool,
) -> None:
    offset = partial.stat().st_size
    hasher = _hash_of(file, partial, offset)
    on_bytes(offset, network=False)
    while True:
        if offset < file.size:
            offset = _fetch_rest(http, label, url, file, partial, hasher, on_bytes)
        if offset == file.size and hasher.matches():
            return
        if restarted:
            kind = "sha256" if file.sha256 else "git sha1"
            raise ListingMismatch(
                f"{label}: {file.path}: the bytes received do not match the listing "
                f"({kind} {file.etag[:12]}, {file.size} bytes)"
            )
        # A partial file from elsewhere, or a server that changed its mind: start over once.
        restarted = True
        on_bytes(-offset, network=False)
        _truncate(partial)
        hasher.reset()
        offset = 0


def _fetch_rest(
    http: HubHttp,
    label: str,
    url: str,
    file: RepoFile,
    partial: Path,
    hasher: FileHasher,
    on_bytes: OnBytes,
) -> int:
    """The rest of the file, retried; a refusal by the storage host is resolved once more
    through the Hub (a signed URL past its time) before it counts."""

    def fetch() -> int:
        return http.retrying(
            label,
            url,
            lambda: _fetch_into(http, label, url, file, partial, hasher, on_bytes),
            progress=lambda: partial.stat().st_size,
        )

    try:
        return fetch()
    except StorageRefused as error:
        logger.info("%s: %s; asking the Hub for a new URL", label, error)
    try:
        return fetch()
    except StorageRefused as error:
        raise StorageRefused(f"{error}, twice: a new URL from the Hub did not help") from None


def _fetch_into(
    http: HubHttp,
    label: str,
    url: str,
    file: RepoFile,
    partial: Path,
    hasher: FileHasher,
    on_bytes: OnBytes,
) -> int:
    """One GET from where ``partial`` ends; ``hasher`` has seen exactly its bytes."""
    offset = partial.stat().st_size
    with os.fdopen(open_no_follow(partial, os.O_RDWR), "r+b") as out:
        try:
            with http.open(label, url, offset=offset) as response:
                if offset and response.status_code == 200:
                    # The server ignored the Range: take the whole body from the start.
                    on_bytes(-offset, network=False)
                    offset = 0
                    hasher.reset()
                check_length(label, file, response, file.size - offset)
                out.seek(offset)
                out.truncate()
                for chunk in response.iter_raw():
                    http.should_stop()
                    if offset + len(chunk) > file.size:
                        raise ListingMismatch(
                            f"{label}: {file.path}: the Hub sent more than the {file.size} "
                            "bytes listed"
                        )
                    out.write(chunk)
                    hasher.update(chunk)
                    offset += len(chunk)
                    on_bytes(len(chunk), network=True)
        except RangeRejected:
            out.truncate(0)
            on_bytes(-offset, network=False)
            hasher.reset()
            raise
    return offset


def _truncate(partial: Path, *, keep: bool = False) -> None:
    """Empty ``partial`` (``keep``: only make sure it exists), never through a symlink."""
    flags = os.O_WRONLY | os.O_CREAT | (0 if keep else os.O_TRUNC)
    os.close(open_no_follow(partial, flags))


def _hash_of(file: RepoFile, path: Path, length: int | None = None) -> FileHasher:
    hasher = FileHasher(file)
    hasher.update_from(path, file.size if length is None else length)
    return hasher
