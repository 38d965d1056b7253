"""Every name a Hub (or a mirror run by someone else) sends is checked here before it is used.

Commit ids and blob ids become folder and file names in the cache, file paths become paths
under the snapshot folder (and under ``--local-dir``): a hostile answer must not be able to
name anything outside them. A bad answer is PrefetchFailed (exit 40), never retried.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from entrykit.errors import PrefetchFailed
from entrykit.hub.files import RepoFile

_COMMIT = re.compile(r"[0-9a-f]{40}")
_BLOB_ID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_XET_HASH = re.compile(r"[0-9a-fA-F]{64}")  # huggingface_hub's is_valid_xet_hash
_BAD_CHAR = re.compile(r"[\x00-\x1f\\]")  # a control character or a backslash
_DRIVE = re.compile(r"[A-Za-z]:")  # Windows reads "C:x" as x in drive C's current folder
MAX_FILE_SIZE = 1 << 50  # a petabyte: anything larger is a lie


def is_commit(text: str) -> bool:
    return _COMMIT.fullmatch(text) is not None


def is_blob_id(text: str) -> bool:
    return _BLOB_ID.fullmatch(text) is not None


def is_sha256(text: str) -> bool:
    return _SHA256.fullmatch(text) is not None


def path_problem(path: str) -> str | None:
    """Why ``path`` (a repo file path) could leave the folder it is placed in, or None."""
    if not path:
        return "an empty path"
    if path.startswith("/") or _BAD_CHAR.search(path):
        return "an absolute path, a backslash or a control character"
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return "an empty, '.' or '..' part"
    if ":" in path and any(_DRIVE.match(part) for part in parts):
        return "a part that starts with a drive letter (C:)"
    return None


def clash(paths: Iterable[str]) -> str | None:
    """A path that is both a file and a folder of another listed path, or None: both cannot
    exist on disk (a listing from a hostile Hub, or a hand-edited lock file)."""
    files = set(paths)
    folders: set[str] = set()
    for path in files:
        end = path.rfind("/")
        while end > 0 and (folder := path[:end]) not in folders:  # its parents: seen
            folders.add(folder)
            end = path.rfind("/", 0, end)
    both = files & folders
    return min(both) if both else None


def checked_commit(label: str, where: str, value: object) -> str:
    """``value`` if it is a commit id (40 lowercase hex digits); else PrefetchFailed."""
    if isinstance(value, str) and is_commit(value):
        return value
    raise PrefetchFailed(f"{label}: {where} sent {shown(value)} as a commit, not 40 hex digits")


def checked_file(label: str, entry: dict[str, Any]) -> RepoFile:
    """A tree entry of type ``file`` as a RepoFile, every field checked; else PrefetchFailed."""
    path = entry.get("path")
    if not isinstance(path, str) or (problem := path_problem(path)):
        reason = "no path" if not isinstance(path, str) else problem
        raise PrefetchFailed(f"{label}: the Hub listed the path {shown(path)}: {reason}")
    blob_id = _match(label, path, "oid", entry.get("oid"), _BLOB_ID)
    lfs = entry.get("lfs")
    if lfs is not None and not isinstance(lfs, dict):
        raise PrefetchFailed(f"{label}: {path}: the Hub sent an 'lfs' that is not an object")
    size = _size(label, path, lfs["size"] if lfs else entry.get("size"))
    sha256 = _match(label, path, "lfs oid", lfs.get("oid"), _SHA256) if lfs else None
    xet_hash = entry.get("xetHash")
    if xet_hash is not None:
        xet_hash = _match(label, path, "xetHash", xet_hash, _XET_HASH)
    return RepoFile(path=path, size=size, blob_id=blob_id, sha256=sha256, xet_hash=xet_hash)


def _match(label: str, path: str, field: str, value: object, pattern: re.Pattern[str]) -> str:
    if isinstance(value, str) and pattern.fullmatch(value):
        return value
    raise PrefetchFailed(f"{label}: {path}: the Hub sent {shown(value)} as its {field}")


def _size(label: str, path: str, value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_FILE_SIZE:
        return value
    raise PrefetchFailed(f"{label}: {path}: the Hub sent {shown(value)} as its size")


def shown(value: object) -> str:
    """A hostile value, shortened for a log line."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
