"""The HTTP side of the local Hub: the routes huggingface_hub uses, answered from a `ServedHub`
(`hub_fixtures.LocalHub`), with its faults applied."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qs, quote, unquote, urlsplit

from hub_model import Fault, HubFile, HubRepo, RequestRecord, git_blob_sha1

_CHUNK = 64 * 1024
Tamper = Callable[[str, object, dict[str, str]], tuple[object, dict[str, str]]]


class ServedHub(Protocol):
    """What the handler reads from the hub it serves."""

    latency: float
    bandwidth: float | None
    page_size: int
    ranges: bool
    repos: dict[tuple[str, str], HubRepo]
    tokens: dict[str, set[tuple[str, str]] | None]
    tamper: Tamper | None
    url: str
    cdn_url: str
    _stop: threading.Event

    def _take_fault(self, method: str, path: str, origin: str) -> Fault | None: ...

    def _record(self, record: RequestRecord) -> None: ...

    def _lfs_blob(self, sha256: str) -> HubFile | None: ...

    def blob_path(self, file: HubFile) -> Path: ...


class HubServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64
    hub: ServedHub
    origin: str


_API = re.compile(r"^/api/(models|datasets|spaces)/(.+)$")
_RESOLVE = re.compile(r"^/(?:(datasets|spaces)/)?((?:[^/]+/)?[^/]+)/resolve/([^/]+)/(.+)$")
_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}


class HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: HubServer

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
