"""A local Hugging Face Hub on 127.0.0.1 for the tests, with fault injection.

`LocalHub` speaks the part of the Hub's HTTP API that huggingface_hub 2.x uses to download
(read from its source: ``hf_api.py``, ``file_download.py``, ``_snapshot_download.py``,
``utils/_http.py``, ``utils/_pagination.py``):

- ``GET /api/{models,datasets,spaces}/{id}[/revision/{rev}]``: ``id``, ``sha``, ``siblings``;
  404 with ``X-Error-Code: RepoNotFound`` / ``RevisionNotFound``.
- ``GET /api/{type}s/{id}/tree/{rev}[/{path}]?recursive=true``: ``type``, ``oid``, ``size``,
  ``path``, ``lfs: {oid, size, pointerSize}``; paginated with a GitHub-style ``Link`` header.
- ``HEAD``/``GET /{datasets/|spaces/}{id}/resolve/{rev}/{path}``: ``X-Repo-Commit``, ``ETag``
  (git blob sha1), ``Content-Length``, ``Range`` -> 206; an LFS file answers 302 to a second
  origin (the "CDN") with ``X-Linked-Etag`` (sha256) and ``X-Linked-Size``; 404
  ``EntryNotFound`` for a missing file.
- private repos: 401 ``RepoNotFound`` without a valid token; gated repos: 401 ``GatedRepo``
  without a token and 403 ``GatedRepo`` with a token that has no access.

Faults on demand (`LocalHub.inject`): a status (503, 429 with ``Retry-After`` or a
``RateLimit`` header) for the next N matching requests, a connection cut after K body bytes,
a stall, a body that is not what was asked for, a ``Content-Length`` that lies; plus
``latency`` added to every request and a per-connection ``bandwidth`` cap. A hostile Hub:
``tamper`` rewrites every JSON answer (and its headers) before it is sent. Every request is
recorded (`LocalHub.requests`, `LocalHub.count`).

Usable outside pytest (benches, container tests): ``with LocalHub() as hub: ...``.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import random
import re
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

import pytest

LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n"
DEFAULT_LFS_THRESHOLD = 1 << 20  # files this large are stored in LFS unless told otherwise
_CHUNK = 64 * 1024


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


class LocalHub:
    """A threaded Hub on 127.0.0.1 (plus a second origin for LFS blobs)."""

    def __init__(
        self,
        *,
        latency: float = 0.0,
        bandwidth: float | None = None,
        page_size: int = 1000,
    ) -> None:
        self.latency = latency  # seconds added to every request
        self.bandwidth = bandwidth  # bytes per second per connection, None = unlimited
        self.page_size = page_size  # tree entries per page
        self.ranges = True  # False: ignore Range headers and always send the whole file
        # A hostile Hub: (path, JSON body, headers) -> (body, headers) for every JSON answer.
        self.tamper: Callable[[str, object, dict[str, str]], tuple[object, dict[str, str]]] | None
        self.tamper = None
        self.repos: dict[tuple[str, str], HubRepo] = {}
        self.tokens: dict[str, set[tuple[str, str]] | None] = {}  # token -> repos (None: all)
        self.faults: list[Fault] = []
        self.requests: list[RequestRecord] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._servers: list[ThreadingHTTPServer] = []
        self._threads: list[threading.Thread] = []
        self._commit_counter = 0
        # Blob bytes also live in files, served with sendfile: benchmarks measure the clients.
        self._blob_dir = tempfile.TemporaryDirectory(prefix="localhub-blobs-")
        self.url = ""
        self.cdn_url = ""

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> LocalHub:
        for origin in ("hub", "cdn"):
            server = _Server(("127.0.0.1", 0), _Handler)
            server.hub = self
            server.origin = origin
            thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
            )
            thread.start()
            self._servers.append(server)
            self._threads.append(thread)
        self.url = f"http://127.0.0.1:{self._servers[0].server_address[1]}"
        self.cdn_url = f"http://127.0.0.1:{self._servers[1].server_address[1]}"
        return self

    def stop(self) -> None:
        self._stop.set()
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._blob_dir.cleanup()

    def blob_path(self, file: HubFile) -> Path:
        """The file holding ``file``'s bytes (written on first use)."""
        path = Path(self._blob_dir.name) / file.etag
        if not path.exists():
            temporary = path.with_name(f"{file.etag}.{threading.get_ident()}.tmp")
            temporary.write_bytes(file.data)
            os.replace(temporary, path)
        return path

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- content -----------------------------------------------------------------------

    def add_repo(
        self,
        repo_id: str,
        files: Mapping[str, bytes],
        *,
        repo_type: str = "model",
        private: bool = False,
        gated: bool = False,
        lfs: set[str] | frozenset[str] | None = None,
        lfs_threshold: int = DEFAULT_LFS_THRESHOLD,
    ) -> str:
        """Create a repo whose ``main`` branch holds ``files``; returns the commit sha."""
        with self._lock:
            self.repos[(repo_type, repo_id)] = HubRepo(repo_id, repo_type, private, gated)
        return self.commit(
            repo_id, files, repo_type=repo_type, lfs=lfs, lfs_threshold=lfs_threshold
        )

    def commit(
        self,
        repo_id: str,
        files: Mapping[str, bytes | None],
        *,
        repo_type: str = "model",
        branch: str = "main",
        lfs: set[str] | frozenset[str] | None = None,
        lfs_threshold: int = DEFAULT_LFS_THRESHOLD,
    ) -> str:
        """A new commit on ``branch`` (created if missing): the parent's files updated by
        ``files`` (``None`` deletes a file). Moves the branch; returns the new sha."""
        with self._lock:
            repo = self.repos[(repo_type, repo_id)]
            parent = repo.commits.get(repo.refs.get(branch, ""), {})
            tree = dict(parent)
            for path, data in files.items():
                if data is None:
                    tree.pop(path, None)
                else:
                    is_lfs = path in lfs if lfs is not None else len(data) >= lfs_threshold
                    tree[path] = HubFile.build(path, data, is_lfs)
            self._commit_counter += 1
            digest = hashlib.sha1(f"{repo_type}/{repo_id}#{self._commit_counter}".encode())
            for path in sorted(tree):
                digest.update(f"{path}\0{tree[path].sha1}\0".encode())
            sha = digest.hexdigest()
            repo.commits[sha] = tree
            repo.refs[branch] = sha
            return sha

    def move_branch(self, repo_id: str, branch: str, sha: str, *, repo_type: str = "model") -> None:
        with self._lock:
            repo = self.repos[(repo_type, repo_id)]
            assert sha in repo.commits, sha
            repo.refs[branch] = sha

    def files(
        self, repo_id: str, revision: str = "main", *, repo_type: str = "model"
    ) -> dict[str, HubFile]:
        repo = self.repos[(repo_type, repo_id)]
        sha = repo.resolve(revision)
        assert sha is not None, revision
        return dict(repo.commits[sha])

    def sha(self, repo_id: str, revision: str = "main", *, repo_type: str = "model") -> str:
        sha = self.repos[(repo_type, repo_id)].resolve(revision)
        assert sha is not None, revision
        return sha

    def add_token(self, token: str, repos: set[tuple[str, str]] | None = None) -> None:
        """Accept ``token``: for every private/gated repo, or only ``{(type, id)}``."""
        self.tokens[token] = repos

    # --- faults and counts -------------------------------------------------------------

    def inject(
        self,
        path: str = "*",
        *,
        times: int = 1,
        method: str | None = None,
        origin: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
        cut_after: int | None = None,
        stall: float | None = None,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        length_delta: int = 0,
    ) -> Fault:
        """Fault the next ``times`` requests whose unquoted path matches the glob ``path``."""
        fault = Fault(
            path,
            times,
            method,
            origin,
            status,
            retry_after,
            cut_after,
            stall,
            headers,
            body,
            length_delta,
        )
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    def count(
        self, path: str = "*", *, method: str | None = None, origin: str | None = None
    ) -> int:
        """Requests seen so far whose unquoted path matches the glob ``path``."""
        with self._lock:
            return sum(
                1
                for r in self.requests
                if fnmatch.fnmatchcase(r.path, path)
                and (method is None or r.method == method)
                and (origin is None or r.origin == origin)
            )

    def reset_counts(self) -> None:
        with self._lock:
            self.requests.clear()

    # --- environments ------------------------------------------------------------------

    def env(
        self,
        home: Path,
        *,
        token: str | None = None,
        base: Mapping[str, str] | None = None,
        disable_telemetry: bool = True,
        **extra: str,
    ) -> dict[str, str]:
        """An environment for a subprocess using this Hub with ``home`` as ``HF_HOME``."""
        return hub_env(
            self, home, token=token, base=base, disable_telemetry=disable_telemetry, **extra
        )

    # --- internals used by the handler -------------------------------------------------

    def _take_fault(self, method: str, path: str, origin: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.matches(method, path, origin):
                    fault.times -= 1
                    return fault
        return None

    def _record(self, record: RequestRecord) -> None:
        with self._lock:
            self.requests.append(record)

    def _lfs_blob(self, sha256: str) -> HubFile | None:
        with self._lock:
            for repo in self.repos.values():
                for tree in repo.commits.values():
                    for file in tree.values():
                        if file.sha256 == sha256:
                            return file
        return None


def hub_env(
    hub: LocalHub,
    home: Path,
    *,
    token: str | None = None,
    base: Mapping[str, str] | None = None,
    disable_telemetry: bool = True,
    **extra: str,
) -> dict[str, str]:
    """``base`` (default: os.environ) with the HF_* variables pointing at ``hub`` and ``home``.

    HF_HUB_CACHE is set explicitly (``HF_HOME/hub``) so that both entrykit and huggingface_hub
    agree; HF_TOKEN only when ``token`` is given; HF_HUB_OFFLINE is removed.
    """
    env = dict(os.environ if base is None else base)
    for name in (
        "HF_TOKEN",
        "HF_TOKEN_FILE",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_HUB_OFFLINE",
        "HF_HUB_DISABLE_TELEMETRY",
        "HUGGINGFACE_HUB_CACHE",
        "TRANSFORMERS_OFFLINE",
    ):
        env.pop(name, None)
    env["HF_ENDPOINT"] = hub.url
    env["HF_HOME"] = str(home)
    env["HF_HUB_CACHE"] = str(home / "hub")
    if disable_telemetry:
        env["HF_HUB_DISABLE_TELEMETRY"] = "1"
    if token is not None:
        env["HF_TOKEN"] = token
    env.update(extra)
    return env


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64
    hub: LocalHub
    origin: str


_API = re.compile(r"^/api/(models|datasets|spaces)/(.+)$")
_RESOLVE = re.compile(r"^/(?:(datasets|spaces)/)?((?:[^/]+/)?[^/]+)/resolve/([^/]+)/(.+)$")
_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes: without this, Nagle's algorithm holds
        # the body back for the client's delayed ACK (40 ms a small file).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    # --- dispatch ----------------------------------------------------------------------

    def _handle(self) -> None:
        hub = self.server.hub
        raw = urlsplit(self.path)
        self._raw_path = raw.path
        self._query = raw.query
        self._fault: Fault | None = None
        path = unquote(raw.path)
        # Recorded on arrival, so that a client killed mid-body leaves no late record behind.
        self._record = RequestRecord(
            self.command,
            path,
            raw.query,
            self.server.origin,
            {k.lower(): v for k, v in self.headers.items()},
            0,
            time.time(),
        )
        hub._record(self._record)
        try:
            if hub.latency:
                time.sleep(hub.latency)
            fault = hub._take_fault(self.command, path, self.server.origin)
            if fault is not None:
                if fault.stall is not None and fault.cut_after is None:
                    hub._stop.wait(fault.stall)
                if fault.status is not None:
                    headers = dict(fault.headers or {})
                    if fault.retry_after is not None:
                        headers["Retry-After"] = f"{fault.retry_after:g}"
                    self._send(fault.status, b"injected fault", headers)
                    return
                if fault.body is not None:
                    self._send(200, fault.body, dict(fault.headers or {}), "text/html")
                    return
                self._fault = fault
            if self.server.origin == "cdn":
                self._cdn(path)
            else:
                self._hub(path)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _hub(self, path: str) -> None:
        if path == "/api/agent-harnesses":
            self._error(404, "EntryNotFound", "not served here")
            return
        match = _API.match(path)
        if match:
            self._api(_TYPES[match.group(1)], match.group(2).split("/"))
            return
        match = _RESOLVE.match(path)
        if match:
            kind, repo_id, revision, filename = match.groups()
            self._resolve(_TYPES[f"{kind}"] if kind else "model", repo_id, revision, filename)
            return
        self._error(404, None, "no such route")

    # --- API ---------------------------------------------------------------------------

    def _api(self, repo_type: str, parts: list[str]) -> None:
        for index, keyword in ((2, "revision"), (2, "tree"), (1, "revision"), (1, "tree")):
            if len(parts) > index + 1 and parts[index] == keyword:
                repo_id = "/".join(parts[:index])
                rest = parts[index + 1 :]
                break
        else:
            keyword, repo_id, rest = "info", "/".join(parts), ["main"]
        repo = self._repo(repo_type, repo_id)
        if repo is None:
            return
        # The revision segment is quoted with safe="" ("refs%2Fpr%2F1"): re-split the raw path.
        raw_rest = self._raw_path.split(f"/{keyword}/", 1)[1] if keyword != "info" else "main"
        revision = unquote(raw_rest.split("/", 1)[0])
        sub_path = unquote(raw_rest.split("/", 1)[1]) if "/" in raw_rest else ""
        del rest
        sha = repo.resolve(revision)
        if sha is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return
        tree = repo.commits[sha]
        if keyword in ("revision", "info"):
            body = {
                "_id": hashlib.md5(repo_id.encode()).hexdigest()[:24],
                "id": repo_id,
                "sha": sha,
                "private": repo.private,
                "gated": "auto" if repo.gated else False,
                "disabled": False,
                "lastModified": "2026-01-01T00:00:00.000Z",
                "siblings": [{"rfilename": p} for p in sorted(tree)],
                "tags": [],
            }
            self._send_json(body)
            return
        self._tree(repo, tree, sub_path)

    def _tree(self, repo: HubRepo, tree: dict[str, HubFile], sub_path: str) -> None:
        query = parse_qs(self._query)
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        prefix = sub_path.strip("/") + "/" if sub_path.strip("/") else ""
        entries: dict[str, dict[str, object]] = {}
        for path in sorted(tree):
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix) :].split("/")
            for depth in range(1, len(rest)):
                folder = prefix + "/".join(rest[:depth])
                if recursive or depth == 1:
                    entries.setdefault(
                        folder,
                        {
                            "type": "directory",
                            "oid": git_blob_sha1(folder.encode()),
                            "size": 0,
                            "path": folder,
                        },
                    )
            if recursive or len(rest) == 1:
                file = tree[path]
                entry: dict[str, object] = {
                    "type": "file",
                    "oid": file.sha1,
                    "size": len(file.data),
                    "path": path,
                }
                if file.lfs:
                    entry["lfs"] = {
                        "oid": file.sha256,
                        "size": len(file.data),
                        "pointerSize": file.pointer_size,
                    }
                entries[path] = entry
        if prefix and not entries:
            self._error(404, "EntryNotFound", f"{sub_path} does not exist")
            return
        listing = [entries[key] for key in sorted(entries)]
        hub = self.server.hub
        start = int(query.get("cursor", ["0"])[0])
        page = listing[start : start + hub.page_size]
        headers = {}
        if start + hub.page_size < len(listing):
            next_query = (
                f"recursive={str(recursive).lower()}&expand=false&cursor={start + hub.page_size}"
            )
            headers["Link"] = f'<{hub.url}{self._raw_path}?{next_query}>; rel="next"'
        self._send_json(page, headers)

    # --- files -------------------------------------------------------------------------

    def _resolve(self, repo_type: str, repo_id: str, revision: str, filename: str) -> None:
        repo = self._repo(repo_type, repo_id)
        if repo is None:
            return
        sha = repo.resolve(revision)
        if sha is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return
        file = repo.commits[sha].get(filename)
        if file is None:
            self._error(404, "EntryNotFound", f"{filename} does not exist", {"X-Repo-Commit": sha})
            return
        headers = {"X-Repo-Commit": sha, "Accept-Ranges": "bytes"}
        if file.lfs:
            assert file.sha256 is not None
            headers["ETag"] = f'"{file.sha1}"'
            headers["X-Linked-Etag"] = f'"{file.sha256}"'
            headers["X-Linked-Size"] = str(len(file.data))
            headers["Location"] = (
                f"{self.server.hub.cdn_url}/lfs/{file.sha256}?sig={quote(filename)}"
            )
            self._send(302, b"", headers)
            return
        headers["ETag"] = f'"{file.sha1}"'
        self._send_body(file, headers)

    def _cdn(self, path: str) -> None:
        match = re.match(r"^/lfs/([0-9a-f]{64})$", path)
        file = self.server.hub._lfs_blob(match.group(1)) if match else None
        if file is None:
            self._send(404, b"NoSuchKey", {})
            return
        assert match is not None
        self._send_body(file, {"ETag": f'"{match.group(1)}"', "Accept-Ranges": "bytes"})

    def _send_body(self, file: HubFile, headers: dict[str, str]) -> None:
        data = file.data
        total = len(data)
        start, end = 0, total - 1
        status = 200
        ranged = self.headers.get("Range") if self.server.hub.ranges else None
        if ranged:
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", ranged.strip())
            if match is None:
                self._send(416, b"", {"Content-Range": f"bytes */{total}"})
                return
            start = int(match.group(1))
            end = min(int(match.group(2)), total - 1) if match.group(2) else total - 1
            if start >= total or start > end:
                self._send(416, b"", {"Content-Range": f"bytes */{total}"})
                return
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{total}"
        hub = self.server.hub
        if self._fault is None and not hub.bandwidth and self.command == "GET":
            self._send(status, b"", headers, length=end + 1 - start)
            with hub.blob_path(file).open("rb") as source:
                self.connection.sendfile(source, offset=start, count=end + 1 - start)
            return
        self._send(status, memoryview(data)[start : end + 1], headers)

    # --- helpers -----------------------------------------------------------------------

    def _repo(self, repo_type: str, repo_id: str) -> HubRepo | None:
        hub = self.server.hub
        repo = hub.repos.get((repo_type, repo_id))
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
            return None
        if not (repo.private or repo.gated):
            return repo
        auth = self.headers.get("Authorization", "")
        token = auth[len("Bearer ") :] if auth.startswith("Bearer ") else None
        allowed = token in hub.tokens and (
            hub.tokens[token] is None or (repo_type, repo_id) in (hub.tokens[token] or set())
        )
        if allowed:
            return repo
        if repo.private:
            self._error(401, "RepoNotFound", "Invalid username or password.")
        elif token is None:
            self._error(401, "GatedRepo", "Access to this model is restricted: log in.")
        else:
            self._error(403, "GatedRepo", "Access to this model is restricted: ask for access.")
        return None

    def _error(
        self, status: int, code: str | None, message: str, extra: dict[str, str] | None = None
    ) -> None:
        headers = {"X-Error-Message": message, **(extra or {})}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, json.dumps({"error": message}).encode(), headers, "application/json")

    def _send_json(self, body: object, headers: dict[str, str] | None = None) -> None:
        headers = headers or {}
        tamper = self.server.hub.tamper
        if tamper is not None:
            body, headers = tamper(unquote(self._raw_path), body, headers)
        self._send(200, json.dumps(body).encode(), headers, "application/json")

    def _send(
        self,
        status: int,
        body: bytes | memoryview,
        headers: Mapping[str, str],
        content_type: str = "application/octet-stream",
        *,
        length: int | None = None,
    ) -> None:
        """Status, headers and ``body``; ``length``: the caller sends that many bytes itself."""
        self._record.status = status
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        lie = self._fault.length_delta if self._fault is not None else 0
        self.send_header("Content-Length", str((len(body) if length is None else length) + lie))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command == "HEAD" or not body:
            return
        self._write_body(memoryview(body))

    def _write_body(self, body: memoryview) -> None:
        hub = self.server.hub
        fault = self._fault
        limit = len(body)
        if fault is not None and fault.cut_after is not None:
            limit = min(limit, fault.cut_after)
        started = time.monotonic()
        sent = 0
        while sent < limit:
            piece = body[sent : min(sent + _CHUNK, limit)]
            self.wfile.write(piece)
            sent += len(piece)
            if hub.bandwidth:
                ahead = sent / hub.bandwidth - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
        if fault is not None and fault.length_delta > 0:
            self.wfile.flush()
            hub._stop.wait(fault.stall or 60)  # the rest never comes; the connection stays
            self.close_connection = True
            return
        if fault is not None and fault.cut_after is not None and limit < len(body):
            self.wfile.flush()
            if fault.stall is not None:
                hub._stop.wait(fault.stall)
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def local_hub() -> Iterator[LocalHub]:
    """A fresh, empty local Hub for one test."""
    with LocalHub() as hub:
        yield hub


@pytest.fixture
def hf_home(tmp_path: Path) -> Path:
    """An empty HF_HOME for one test (its cache is ``hf_home / "hub"``)."""
    home = tmp_path / "hf-home"
    home.mkdir()
    return home
