"""HTTP to the Hub for prefetch: metadata and resumable file downloads, retried.

What plain huggingface_hub 2.x lacks and this adds: a timeout on every request (its listing
calls have none), retries with backoff and jitter on connection errors, timeouts, 5xx and 429
(honouring ``Retry-After``) for file downloads too, resumption into the same partial file
across processes, a check of every byte against the listing's sha256 / git sha1, and no
telemetry call (its user agent fetches ``/api/agent-harnesses`` on first use).
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote, urljoin, urlsplit

from entrykit.errors import PrefetchFailed, RepoRefused
from entrykit.hub.cache import FileHasher, RepoFile, ShouldStop

if TYPE_CHECKING:
    import httpx2

TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
REFUSED_STATUS = frozenset({401, 403, 404})
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}


@dataclass(frozen=True)
class HubAccess:
    """Where the Hub and the cache are, and the token: what huggingface_hub would use."""

    endpoint: str
    cache_dir: Path
    token: str | None = None
    offline: bool = False

    @classmethod
    def from_environment(cls) -> HubAccess:
        """``HF_ENDPOINT``, ``HF_HUB_CACHE`` / ``HF_HOME``, ``HF_HUB_OFFLINE`` as huggingface_hub
        reads them, and the token from ``HF_TOKEN`` or the token file of ``hf auth login``."""
        from huggingface_hub import constants

        token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
        if not token:
            try:
                token = Path(constants.HF_TOKEN_PATH).read_text().strip()
            except OSError:
                token = None
        return cls(
            endpoint=constants.ENDPOINT.rstrip("/"),
            cache_dir=Path(constants.HF_HUB_CACHE).expanduser(),
            token=token or None,
            offline=constants.is_offline_mode(),
        )


@dataclass(frozen=True)
class RetryPolicy:
    """Timeouts and the retry schedule; ``delay`` is pure so the schedule can be tested."""

    connect_timeout: float = 10.0
    read_timeout: float = 30.0  # silence on an open connection counts as a failure
    base_delay: float = 0.5
    max_delay: float = 10.0
    give_up_after: float = 120.0  # seconds of failures in a row without a byte of progress

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait before retry ``attempt`` (1-based): exponential backoff with
        jitter (half to full), never less than what the server asked for."""
        backoff: float = min(self.max_delay, self.base_delay * 2.0 ** (attempt - 1))
        wait: float = backoff * rng.uniform(0.5, 1.0)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.give_up_after))
        return wait


class OnBytes(Protocol):
    """Told of every change to the bytes on disk; ``network``: they just arrived."""

    def __call__(self, count: int, *, network: bool) -> None: ...


class _Transient(Exception):
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class _RangeRejected(_Transient):
    """416 on a resume: the partial file is not a prefix of this file; start over."""


class HubClient:
    """One pooled HTTP client shared by all download threads."""

    def __init__(
        self,
        access: HubAccess,
        *,
        max_connections: int,
        policy: RetryPolicy,
        should_stop: ShouldStop,
        user_agent: str,
        max_parts: int = 1,
    ) -> None:
        import httpx2

        self.access = access
        self.policy = policy
        self.should_stop = should_stop
        self.max_parts = max_parts  # connections one large file may use
        self._rng = random.Random()
        self._rng_lock = threading.Lock()
        self._headers = {"user-agent": user_agent, "accept-encoding": "identity"}
        if access.token:
            self._headers["authorization"] = f"Bearer {access.token}"
        self._client = httpx2.Client(
            follow_redirects=False,
            timeout=httpx2.Timeout(
                connect=policy.connect_timeout,
                read=policy.read_timeout,
                write=policy.read_timeout,
                pool=None,
            ),
            limits=httpx2.Limits(
                max_connections=max_connections * 2, max_keepalive_connections=max_connections * 2
            ),
        )
        self._transient_errors: tuple[type[Exception], ...] = (
            _Transient,
            httpx2.TransportError,
            httpx2.DecodingError,
        )

    def close(self) -> None:
        self._client.close()

    # --- metadata ----------------------------------------------------------------------

    def resolve_commit(self, label: str, repo_id: str, repo_type: str, revision: str) -> str:
        url = f"{self._api(repo_id, repo_type)}/revision/{quote(revision, safe='')}"
        data = self._get_json(label, url)
        sha = data.get("sha") if isinstance(data, dict) else None
        if not isinstance(sha, str) or len(sha) != 40:
            raise PrefetchFailed(
                f"{label}: the Hub at {self.access.endpoint} sent no commit for {revision!r}"
            )
        return sha

    def list_files(self, label: str, repo_id: str, repo_type: str, commit: str) -> list[RepoFile]:
        url: str | None = (
            f"{self._api(repo_id, repo_type)}/tree/{commit}?recursive=true&expand=false"
        )
        files: list[RepoFile] = []
        while url is not None:
            page, url = self._get_page(label, url)
            for entry in page:
                if entry.get("type") != "file":
                    continue
                lfs = entry.get("lfs") or None
                files.append(
                    RepoFile(
                        path=str(entry["path"]),
                        size=int(lfs["size"] if lfs else entry["size"]),
                        blob_id=str(entry["oid"]),
                        sha256=str(lfs["oid"]) if lfs else None,
                    )
                )
        return files

    def _api(self, repo_id: str, repo_type: str) -> str:
        return f"{self.access.endpoint}/api/{repo_type}s/{repo_id}"

    def _get_json(self, label: str, url: str) -> Any:
        return self._get_page(label, url)[0]

    def _get_page(self, label: str, url: str) -> tuple[Any, str | None]:
        def attempt() -> tuple[Any, str | None]:
            with self.open(label, url, offset=0) as response:
                response.read()
                try:
                    body = response.json()
                except ValueError as error:
                    raise _Transient(f"invalid JSON from {_where(url)}") from error
                next_url = response.links.get("next", {}).get("url")
                return body, (urljoin(url, next_url) if next_url else None)

        page: tuple[Any, str | None] = self.retrying(label, url, attempt)
        return page

    # --- files -------------------------------------------------------------------------

    def file_url(self, repo_id: str, repo_type: str, commit: str, path: str) -> str:
        prefix = _URL_PREFIX.get(repo_type, f"{repo_type}s/")
        return f"{self.access.endpoint}/{prefix}{repo_id}/resolve/{commit}/{quote(path)}"

    def download(
        self,
        label: str,
        url: str,
        file: RepoFile,
        partial: Path,
        on_bytes: OnBytes,
    ) -> None:
        """Fill ``partial`` with ``file``'s bytes, resuming from what it holds, and check them.

        Raises PrefetchFailed when the bytes stay wrong, RepoRefused on 401/403/404.
        """
        from entrykit.hub.parts import (
            RangedDownload,
            RangesIgnored,
            load_parts,
            plan_parts,
            sidecar_of,
        )

        partial.touch()
        restarted = False
        parts = load_parts(partial, file.size)
        if parts is None:
            sidecar_of(partial).unlink(missing_ok=True)
            parts = plan_parts(partial.stat().st_size, file.size, self.max_parts)
        if parts is not None:
            done = sum(p.done for p in parts)
            on_bytes(done, network=False)
            try:
                RangedDownload(self, label, url, file, partial, parts, on_bytes).run()
                hasher = FileHasher(file)
                hasher.update_from(partial, file.size)
                if hasher.matches():
                    sidecar_of(partial).unlink(missing_ok=True)
                    return
                restarted = True  # wrong bytes: start over once, in one piece
            except RangesIgnored:
                pass  # a server without ranges: one piece from the start
            on_bytes(-sum(p.done for p in parts), network=False)
            sidecar_of(partial).unlink(missing_ok=True)
            partial.write_bytes(b"")
        hasher = FileHasher(file)
        offset = partial.stat().st_size
        hasher.update_from(partial, offset)
        on_bytes(offset, network=False)
        while True:
            if offset < file.size:
                offset = self.retrying(
                    label,
                    url,
                    lambda: self._fetch_into(label, url, partial, hasher, on_bytes),
                    progress=lambda: partial.stat().st_size,
                )
            if offset == file.size and hasher.matches():
                return
            if restarted:
                kind = "sha256" if file.sha256 else "git sha1"
                raise PrefetchFailed(
                    f"{label}: {file.path}: the bytes received do not match the listing "
                    f"({kind} {file.etag[:12]}, {file.size} bytes)"
                )
            # A partial file from elsewhere, or a server that changed its mind: start over once.
            restarted = True
            on_bytes(-offset, network=False)
            partial.write_bytes(b"")
            hasher.reset()
            offset = 0

    def _fetch_into(
        self,
        label: str,
        url: str,
        partial: Path,
        hasher: FileHasher,
        on_bytes: OnBytes,
    ) -> int:
        """One GET from where ``partial`` ends; ``hasher`` has seen exactly its bytes."""
        offset = partial.stat().st_size
        with partial.open("r+b") as out:
            try:
                with self.open(label, url, offset=offset) as response:
                    if offset and response.status_code == 200:
                        # The server ignored the Range: take the whole body from the start.
                        on_bytes(-offset, network=False)
                        offset = 0
                        hasher.reset()
                    out.seek(offset)
                    out.truncate()
                    for chunk in response.iter_bytes():
                        self.should_stop()
                        out.write(chunk)
                        hasher.update(chunk)
                        offset += len(chunk)
                        on_bytes(len(chunk), network=True)
            except _RangeRejected:
                out.truncate(0)
                on_bytes(-offset, network=False)
                hasher.reset()
                raise
        return offset

    # --- the request and the retry loop ------------------------------------------------

    @contextmanager
    def open(
        self, label: str, url: str, *, offset: int, end: int | None = None
    ) -> Iterator[httpx2.Response]:
        """GET ``url`` following redirects (the Authorization header stays on the Hub's
        origin), raising RepoRefused / PrefetchFailed / _Transient on error statuses."""
        headers = dict(self._headers)
        if offset or end is not None:
            headers["range"] = f"bytes={offset}-{'' if end is None else end}"
        hub_origin = _origin(self.access.endpoint)
        for _ in range(10):
            request = self._client.build_request("GET", url, headers=headers)
            response = self._client.send(request, stream=True)
            try:
                if response.is_redirect and "location" in response.headers:
                    url = urljoin(url, response.headers["location"])
                    if _origin(url) != hub_origin:
                        headers.pop("authorization", None)
                    continue
                self._check(label, url, response, offset)
                yield response
                return
            finally:
                response.close()
        raise PrefetchFailed(f"{label}: too many redirects from {_where(url)}")

    def _check(self, label: str, url: str, response: httpx2.Response, offset: int) -> None:
        status = response.status_code
        if status in (200, 206):
            return
        if status in TRANSIENT_STATUS:
            raise _Transient(f"HTTP {status} from {_where(url)}", _retry_after(response))
        if status in REFUSED_STATUS:
            raise RepoRefused(self._refusal(label, response))
        if status == 416 and offset:
            raise _RangeRejected(f"HTTP 416 for a resume at byte {offset} from {_where(url)}")
        reason = response.headers.get("x-error-message") or response.reason_phrase
        raise PrefetchFailed(f"{label}: HTTP {status} from {_where(url)}: {reason}")

    def _refusal(self, label: str, response: httpx2.Response) -> str:
        status = response.status_code
        code = response.headers.get("x-error-code", "")
        sent = "a token was sent" if self.access.token else "no token was sent"
        where = self.access.endpoint
        if code == "GatedRepo":
            return (
                f"{label}: gated repo (HTTP {status}, {sent}): accept its conditions on {where} "
                "with your account, then give entrykit that account's token: mount it as the "
                "secret `huggingface_token` (or set HF_TOKEN)"
            )
        if code == "RevisionNotFound":
            return f"{label}: revision not found on {where} (HTTP {status}): check the @REVISION"
        if code == "EntryNotFound":
            return (
                f"{label}: a listed file is missing on {where} (HTTP {status}): {response.url.path}"
            )
        if status == 403:
            return (
                f"{label}: access refused (HTTP 403, {sent}): the token lacks read access to "
                "this repo; mount a token that has it as the secret `huggingface_token`"
            )
        return (
            f"{label}: repo not found on {where} (HTTP {status}, {sent}): check OWNER/NAME and "
            "the type (model:, dataset:, space:); for a private repo, mount a token with access "
            "as the secret `huggingface_token` (or set HF_TOKEN)"
        )

    def retrying(
        self,
        label: str,
        url: str,
        attempt: Callable[[], Any],
        *,
        progress: Callable[[], int] | None = None,
    ) -> Any:
        """Run ``attempt`` until it succeeds; transient failures are retried with backoff
        until ``give_up_after`` seconds pass without progress, or the run must stop."""
        import logging

        logger = logging.getLogger("entrykit.prefetch")
        failures = 0
        first_failure = 0.0
        last_progress = progress() if progress else 0
        while True:
            self.should_stop()
            try:
                return attempt()
            except self._transient_errors as error:
                reason = str(error) or type(error).__name__
                retry_after = error.retry_after if isinstance(error, _Transient) else None
            if progress is not None and (now_progress := progress()) > last_progress:
                last_progress, failures = now_progress, 0
            failures += 1
            if failures == 1:
                first_failure = time.monotonic()
            elif time.monotonic() - first_failure > self.policy.give_up_after:
                raise PrefetchFailed(
                    f"{label}: giving up on {_where(url)} after {failures} attempts in "
                    f"{time.monotonic() - first_failure:.0f} s: {reason}"
                )
            with self._rng_lock:
                wait = self.policy.delay(failures, retry_after, self._rng)
            remaining = self.should_stop.remaining()
            if remaining is not None:
                wait = min(wait, max(remaining, 0.0))
            logger.warning("%s: %s; retry %d in %.1f s", label, reason, failures, wait)
            self.should_stop.sleep(wait)


def _retry_after(response: httpx2.Response) -> float | None:
    value = response.headers.get("retry-after", "").strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return (parts.scheme, (parts.hostname or "").lower(), parts.port)


def _where(url: str) -> str:
    """The URL without its query (signed CDN URLs carry credentials there)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}{parts.path}"
