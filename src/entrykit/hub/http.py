"""One pooled HTTP client for the Hub: GET with redirects, statuses sorted into what to do.

What plain huggingface_hub 2.x lacks and this adds: a timeout on every request (its listing
calls have none), retries (``retry.py``) for file downloads too, no telemetry call (its user
agent fetches ``/api/agent-harnesses`` on first use), and a signed redirect target reused by
every range of a file (``SignedTarget``) instead of one ``/resolve`` per range.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urljoin, urlsplit

from entrykit.errors import PrefetchFailed, RepoRefused
from entrykit.hub.access import HubAccess, checked_token
from entrykit.hub.retry import RangeRejected, RetryPolicy, Transient, retrying, server_wait, where
from entrykit.hub.stop import ShouldStop

if TYPE_CHECKING:
    import httpx2

_T = TypeVar("_T")
TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
REFUSED_STATUS = frozenset({401, 403, 404})
# What a storage host (the CDN a /resolve redirect leads to) says to a signed URL past its
# time; from there it never means that the repo is refused.
EXPIRED_STATUS = frozenset({401, 403, 404, 410})
MAX_REDIRECTS = 10


class StorageRefused(PrefetchFailed):
    """The storage host a ``/resolve`` redirect led to refused the bytes: most often a signed
    URL past its time, so the caller resolves it once more through the Hub."""


class SignedTarget:
    """Where ``/resolve`` sent one file's bytes; shared by its ranges until it stops working."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.url: str | None = None
        self.refused = 0  # refusals by the storage host since its last good answer


class HubHttp:
    """The HTTP client shared by all download threads, with the retry policy and the stop."""

    def __init__(
        self,
        access: HubAccess,
        *,
        max_connections: int,
        policy: RetryPolicy,
        should_stop: ShouldStop,
        user_agent: str,
    ) -> None:
        import httpx2

        self.access = access
        self.policy = policy
        self.should_stop = should_stop
        self._headers = {"user-agent": user_agent, "accept-encoding": "identity"}
        token = checked_token(access.token, "the Hub token")
        if token:
            self._headers["authorization"] = f"Bearer {token}"
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
        self.transient: tuple[type[BaseException], ...] = (
            Transient,
            httpx2.TransportError,
            httpx2.DecodingError,
        )

    def close(self) -> None:
        self._client.close()

    def retrying(
        self,
        label: str,
        url: str,
        attempt: Callable[[], _T],
        *,
        progress: Callable[[], int] | None = None,
        give_up_after: float | None = None,
        retry_level: int = logging.WARNING,
    ) -> _T:
        """`retry.retrying` with this client's policy, stop and transient errors."""
        return retrying(
            label,
            url,
            attempt,
            policy=self.policy,
            should_stop=self.should_stop,
            transient=self.transient,
            progress=progress,
            give_up_after=give_up_after,
            retry_level=retry_level,
        )

    @contextmanager
    def open(
        self,
        label: str,
        url: str,
        *,
        offset: int = 0,
        end: int | None = None,
        target: SignedTarget | None = None,
        quick: bool = False,
    ) -> Iterator[httpx2.Response]:
        """GET ``url`` following redirects (the Authorization header stays on the Hub's
        origin), from byte ``offset`` to ``end`` (inclusive). With ``target``, the redirect
        is resolved once and reused; an expired target is resolved again on the next try.
        ``quick``: short timeouts (a cached snapshot can stand in if the Hub is down).

        Raises RepoRefused (401/403/404 from the Hub), Transient (worth retrying),
        PrefetchFailed (anything else)."""
        headers = dict(self._headers)
        a_file = "/resolve/" in urlsplit(url).path  # not an API call: a storage host may serve it
        if offset or end is not None:
            headers["range"] = f"bytes={offset}-{'' if end is None else end}"
        if target is not None:
            url = self._signed_url(label, url, target)
            if self._origin(url) != self._origin(self.access.endpoint):
                headers.pop("authorization", None)
        extra = {"timeout": self._quick_timeout()} if quick else {}
        for _ in range(MAX_REDIRECTS):
            response = self._send(label, "GET", url, headers, stream=True, **extra)
            try:
                if response.is_redirect and "location" in response.headers:
                    url = _redirect(label, url, response.headers["location"])
                    if self._origin(url) != self._origin(self.access.endpoint):
                        headers.pop("authorization", None)
                    continue
                if a_file and response.status_code in EXPIRED_STATUS and not self._on_hub(url):
                    self._refused_by_storage(label, url, response.status_code, target)
                self._check(label, url, response, offset)
                if target is not None:
                    target.refused = 0
                yield response
                return
            finally:
                response.close()
        raise PrefetchFailed(f"{label}: too many redirects from {where(url)}")

    def _signed_url(self, label: str, url: str, target: SignedTarget) -> str:
        """The target of ``url``'s redirect, asked once (a HEAD) for all ranges of a file."""
        with target.lock:
            if target.url is None:
                response = self._send(label, "HEAD", url, self._headers)
                if response.is_redirect and "location" in response.headers:
                    target.url = _redirect(label, url, response.headers["location"])
                else:
                    self._check(label, url, response, 0)
                    target.url = url  # the Hub serves the bytes itself
            return target.url

    def _send(
        self, label: str, method: str, url: str, headers: dict[str, str], **options: Any
    ) -> httpx2.Response:
        """One request. A request httpx refuses to send (an illegal header value) is
        PrefetchFailed, never a transient outage, and its text (it quotes the header, maybe
        the token) is not shown."""
        import httpx2

        stream = bool(options.pop("stream", False))
        try:
            request = self._client.build_request(method, url, headers=headers, **options)
            return self._client.send(request, stream=stream)
        except (httpx2.LocalProtocolError, UnicodeEncodeError):
            raise PrefetchFailed(
                f"{label}: the request to {where(url)} could not be sent: a header value is "
                "not valid (check the Hub token)"
            ) from None

    def _on_hub(self, url: str) -> bool:
        return self._origin(url) == self._origin(self.access.endpoint)

    def _refused_by_storage(
        self, label: str, url: str, status: int, target: SignedTarget | None
    ) -> None:
        """A refusal by the storage host: with ``target`` (ranges), Transient the first time
        (the next try resolves the target again), StorageRefused when the new target is
        refused too; without, StorageRefused (the caller resolves once more)."""
        refused = StorageRefused(
            f"{label}: the storage host {where(url)} refused the file (HTTP {status}) after "
            "the Hub redirected there"
        )
        if target is None:
            raise refused
        with target.lock:
            if target.url == url:  # the first range to see it; the others just retry
                target.url = None
                target.refused += 1
            again = target.refused > 1
        if again:
            raise StorageRefused(f"{refused}, twice: a new URL from the Hub did not help")
        raise Transient(f"HTTP {status} from {where(url)}: the signed URL expired; resolving again")

    def _quick_timeout(self) -> Any:
        import httpx2

        seconds = min(3.0, self.policy.connect_timeout)
        return httpx2.Timeout(connect=seconds, read=seconds, write=seconds, pool=None)

    def _check(self, label: str, url: str, response: httpx2.Response, offset: int) -> None:
        status = response.status_code
        if status in (200, 206):
            return
        if status in TRANSIENT_STATUS:
            raise Transient(
                f"HTTP {status} from {where(url)}",
                server_wait(response.headers),
                rate_limited=status == 429,
            )
        if status in REFUSED_STATUS:
            raise RepoRefused(self._refusal(label, response))
        if status == 416 and offset:
            raise RangeRejected(f"HTTP 416 for a resume at byte {offset} from {where(url)}")
        reason = response.headers.get("x-error-message") or response.reason_phrase
        raise PrefetchFailed(f"{label}: HTTP {status} from {where(url)}: {reason}")

    def _refusal(self, label: str, response: httpx2.Response) -> str:
        status = response.status_code
        code = response.headers.get("x-error-code", "")
        sent = "a token was sent" if self.access.token else "no token was sent"
        hub = self.access.endpoint
        if code == "GatedRepo":
            return (
                f"{label}: gated repo (HTTP {status}, {sent}): accept its conditions on {hub} "
                "with your account, then give entrykit that account's token: mount it as the "
                "secret `huggingface_token` (or set HF_TOKEN)"
            )
        if code == "RevisionNotFound":
            return f"{label}: revision not found on {hub} (HTTP {status}): check the @REVISION"
        if code == "EntryNotFound":
            return (
                f"{label}: a listed file is missing on {hub} (HTTP {status}): {response.url.path}"
            )
        if status == 403 and self.access.token:
            return (
                f"{label}: access refused (HTTP 403, {sent}): the token lacks read access to "
                "this repo; mount a token that has it as the secret `huggingface_token`"
            )
        if status == 403:
            return (
                f"{label}: access refused (HTTP 403, {sent}): this repo needs a token with "
                "read access; mount one as the secret `huggingface_token` (or set HF_TOKEN)"
            )
        return (
            f"{label}: repo not found on {hub} (HTTP {status}, {sent}): check [OWNER/]NAME and "
            "the type (model:, dataset:, space:); for a private repo, mount a token with access "
            "as the secret `huggingface_token` (or set HF_TOKEN)"
        )

    @staticmethod
    def _origin(url: str) -> tuple[str, str, int | None]:
        parts = urlsplit(url)
        return (parts.scheme, (parts.hostname or "").lower(), parts.port)


def _redirect(label: str, url: str, location: str) -> str:
    """Where a redirect leads; PrefetchFailed when it leaves http(s) (``file:``, ...)."""
    target = urljoin(url, location)
    if urlsplit(target).scheme not in ("http", "https"):
        raise PrefetchFailed(f"{label}: {where(url)} redirects to a non-HTTP URL")
    return target
