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

import fnmatch
import hashlib
import os
import tempfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from hub_model import (
    DEFAULT_LFS_THRESHOLD,
    Fault,
    HubFile,
    HubRepo,
    RequestRecord,
    generated_bytes,
    git_blob_sha1,
)
from hub_server import HubHandler, HubServer, Tamper

__all__ = [
    "Fault",
    "HubFile",
    "LocalHub",
    "generated_bytes",
    "git_blob_sha1",
    "hf_home",
    "hub_env",
    "local_hub",
]


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
        self.tamper: Tamper | None = None
        self.repos: dict[tuple[str, str], HubRepo] = {}
        self.tokens: dict[str, set[tuple[str, str]] | None] = {}  # token -> repos (None: all)
        self.faults: list[Fault] = []
        self.requests: list[RequestRecord] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._servers: list[HubServer] = []
        self._threads: list[threading.Thread] = []
        self._commit_counter = 0
        # Blob bytes also live in files, served with sendfile: benchmarks measure the clients.
        self._blob_dir = tempfile.TemporaryDirectory(prefix="localhub-blobs-")
        self.url = ""
        self.cdn_url = ""

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> LocalHub:
        for origin in ("hub", "cdn"):
            server = HubServer(("127.0.0.1", 0), HubHandler)
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
