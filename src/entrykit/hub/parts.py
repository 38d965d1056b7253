"""Large files in parallel ranges: several connections into one partial file.

A CDN caps each connection; a large blob is split into blocks of ``PART_SIZE`` fetched by up
to N connections side by side, each taking the next block in file order, with ``Range``
requests written in place (``os.pwrite``) into the usual ``blobs/<etag>.incomplete``. Since
blocks finish roughly in order, the file's hash follows the written prefix while bytes arrive
(``_Follower``), and little is left to hash at the end. A sidecar ``<etag>.incomplete-parts``
(JSON, replaced atomically) records, per block, how many bytes from its start are on disk.
It is written before the first byte and only ever claims bytes already written, so a process
killed at any moment leaves a state the next run resumes from. No sidecar means a plain
prefix (the sequential case, and huggingface_hub's own partial files).
"""

from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from entrykit.errors import PrefetchFailed
from entrykit.hub.cache import SIDECAR_SUFFIX, write_atomic
from entrykit.hub.files import FileHasher, ListingMismatch, RepoFile
from entrykit.hub.http import HubHttp, SignedTarget
from entrykit.hub.nofollow import open_no_follow

if TYPE_CHECKING:
    import httpx2

PART_SIZE = 16_000_000  # a block: small enough to finish in order, large for few requests
_HASH_CHUNK = 4 << 20
_SAVE_EVERY = 0.5  # seconds between sidecar updates while downloading


class OnBytes(Protocol):
    """Told of every change to the bytes on disk; ``network``: they just arrived."""

    def __call__(self, count: int, *, network: bool) -> None: ...


class RangesIgnored(Exception):
    """The server answered a part's Range with the whole file."""


@dataclass
class Part:
    start: int
    done: int  # bytes on disk from ``start``
    end: int  # exclusive

    @property
    def next(self) -> int:
        return self.start + self.done

    @property
    def finished(self) -> bool:
        return self.next >= self.end


def sidecar_of(partial: Path) -> Path:
    return partial.with_name(partial.name + SIDECAR_SUFFIX)


def load_parts(partial: Path, size: int) -> list[Part] | None:
    """The recorded parts of ``partial``, or None (no sidecar, or one that makes no sense)."""
    try:
        data = json.loads(sidecar_of(partial).read_text("utf-8"))
        parts = [Part(int(s), int(d), int(e)) for s, d, e in data["parts"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    edges = [0, *(p.end for p in parts)]
    valid = (
        data.get("size") == size
        and partial.exists()
        and all(p.start == edges[i] and 0 <= p.done <= p.end - p.start for i, p in enumerate(parts))
        and edges[-1] == size
    )
    return parts if valid else None


def plan_parts(prefix: int, size: int, connections: int) -> list[Part] | None:
    """Blocks for a file of ``size`` whose first ``prefix`` bytes are on disk, or None when
    one connection is allowed or the rest is too small to be worth splitting."""
    rest = size - prefix
    if connections < 2 or rest < 2 * PART_SIZE:
        return None
    parts = [Part(0, prefix, prefix)] if prefix else []
    for start in range(prefix, size, PART_SIZE):
        parts.append(Part(start, 0, min(size, start + PART_SIZE)))
    return parts


class RangedDownload:
    """Fetch the unfinished parts of one file side by side."""

    def __init__(
        self,
        http: HubHttp,
        label: str,
        url: str,
        file: RepoFile,
        partial: Path,
        parts: list[Part],
        on_bytes: OnBytes,
        *,
        connections: int,
    ) -> None:
        self.http = http
        self.connections = connections
        self.target = SignedTarget()  # one /resolve for all parts
        self.label = label
        self.url = url
        self.file = file
        self.partial = partial
        self.parts = parts
        self.on_bytes = on_bytes
        self._lock = threading.Lock()
        self._saved = 0.0
        self._failed = threading.Event()
        self._wrote = threading.Event()
        self._pending = iter([p for p in parts if not p.finished])

    def run(self) -> FileHasher:
        """Fetch every block; returns the hasher that has seen the whole file. Raises
        RangesIgnored when the server does not serve ranges, else what the HTTP client
        raises; the sidecar always records what is on disk."""
        self._save()
        self._fd = open_no_follow(self.partial, os.O_RDWR | os.O_CREAT)
        follower = _Follower(self)
        try:
            follower.start()
            workers = min(self.connections, sum(1 for p in self.parts if not p.finished))
            with ThreadPoolExecutor(workers, thread_name_prefix="prefetch-part") as pool:
                futures = [pool.submit(self._worker) for _ in range(workers)]
                wait(futures, return_when=FIRST_EXCEPTION)
                failed = next((f for f in futures if f.done() and f.exception()), None)
                if failed is not None:
                    self._failed.set()
            if failed is not None:
                error = failed.exception()
                assert error is not None
                raise error
            return follower.finish()
        finally:
            self._failed.set()  # stops the follower if it is still running
            follower.join()
            os.close(self._fd)
            self._save()

    def frontier(self) -> int:
        """Bytes on disk from the start of the file without a gap."""
        with self._lock:
            for part in self.parts:
                if not part.finished:
                    return part.next
        return self.file.size

    def _worker(self) -> None:
        while not self._failed.is_set():
            with self._lock:
                part = next(self._pending, None)
            if part is None:
                return
            self._part(part)

    def _part(self, part: Part) -> None:
        self.http.retrying(
            self.label, self.url, lambda: self._fetch(part), progress=lambda: part.done
        )

    def _fetch(self, part: Part) -> None:
        if part.finished:
            return
        with self.http.open(
            self.label, self.url, offset=part.next, end=part.end - 1, target=self.target
        ) as response:
            expected = f"bytes {part.next}-{part.end - 1}/{self.file.size}"
            if response.status_code != 206 or response.headers.get("content-range") != expected:
                raise RangesIgnored(response.headers.get("content-range", "no Content-Range"))
            check_length(self.label, self.file, response, part.end - part.next)
            for chunk in response.iter_raw():
                if self._failed.is_set():
                    raise PrefetchFailed("prefetch stopped")
                self.http.should_stop()
                chunk = chunk[: part.end - part.next]
                written = 0
                while written < len(chunk):
                    written += os.pwrite(self._fd, chunk[written:], part.next + written)
                with self._lock:
                    part.done += len(chunk)
                self._wrote.set()
                self.on_bytes(len(chunk), network=True)
                if time.monotonic() - self._saved > _SAVE_EVERY:
                    self._save()
                if part.finished:
                    break

    def _save(self) -> None:
        with self._lock:
            self._saved = time.monotonic()
            state = {
                "size": self.file.size,
                "parts": [[p.start, p.done, p.end] for p in self.parts],
            }
            write_atomic(sidecar_of(self.partial), json.dumps(state))


class _Follower(threading.Thread):
    """Hashes the file's gap-free prefix as it grows, reading back what was just written
    (from the page cache), so that the hash is done soon after the last byte arrives."""

    def __init__(self, download: RangedDownload) -> None:
        super().__init__(name="prefetch-hash", daemon=True)
        self.download = download
        self.hasher = FileHasher(download.file)
        self.position = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        download = self.download
        size = download.file.size
        try:
            while self.position < size:
                if download._failed.is_set():
                    return  # stopped or failed: the next run hashes from the start anyway
                frontier = download.frontier()
                if frontier <= self.position:
                    download._wrote.wait(0.05)
                    download._wrote.clear()
                    continue
                length = min(_HASH_CHUNK, frontier - self.position)
                data = os.pread(download._fd, length, self.position)
                if not data:
                    raise PrefetchFailed(f"{download.file.path}: the partial file is short")
                self.hasher.update(data)
                self.position += len(data)
        except BaseException as error:  # reported by finish()
            self.error = error

    def finish(self) -> FileHasher:
        """Wait for the hash of the whole file (all blocks are on disk by now)."""
        self.join()
        if self.error is not None:
            raise self.error
        if self.position != self.download.file.size:
            raise PrefetchFailed(f"{self.download.file.path}: the file was not hashed whole")
        return self.hasher


def check_length(label: str, file: RepoFile, response: httpx2.Response, expected: int) -> None:
    """PrefetchFailed at once when the body announces a length other than ``expected``
    (what the listing implies): a lie in either direction would cost a timeout or a retry."""
    announced = response.headers.get("content-length")
    if announced is not None and announced.strip() != str(expected):
        raise ListingMismatch(
            f"{label}: {file.path}: the server announced {announced.strip()[:20]} bytes where "
            f"the listing implies {expected}"
        )
