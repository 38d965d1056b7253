"""The Hub's metadata API: a revision's commit and a commit's file listing, both checked.

An answer that is not the JSON expected, a commit that is not 40 hex digits, a listed name
that could leave the cache, or a listing whose ``Link: rel=next`` pages in a loop or follows
a page that is not full are PrefetchFailed at once: a Hub that sends them will not send
better on a retry.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

from entrykit.errors import PrefetchFailed
from entrykit.hub.files import RepoFile
from entrykit.hub.http import HubHttp
from entrykit.hub.names import checked_commit, checked_file, clash
from entrykit.hub.retry import where

# The Hub's listing pages hold 1000 entries (50 with expand=true), all full but the last.
MIN_PAGE = 50  # a shorter page with a next page after it is not one the Hub sends
MAX_PAGES = 10_000  # 10 million entries at the Hub's page size: more is a loop in disguise
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}


def api_url(http: HubHttp, repo_id: str, repo_type: str) -> str:
    return f"{http.access.endpoint}/api/{repo_type}s/{repo_id}"


def file_url(http: HubHttp, repo_id: str, repo_type: str, commit: str, path: str) -> str:
    prefix = _URL_PREFIX.get(repo_type, f"{repo_type}s/")
    return f"{http.access.endpoint}/{prefix}{repo_id}/resolve/{commit}/{quote(path)}"


def resolve_commit(
    http: HubHttp,
    label: str,
    repo_id: str,
    repo_type: str,
    revision: str,
    *,
    give_up_after: float | None = None,
) -> str:
    """The commit ``revision`` names on the Hub. Raises RepoRefused (42), HubUnreachable
    after ``give_up_after`` seconds of transient failures, PrefetchFailed for a bad answer.
    With ``give_up_after`` (a cached snapshot can stand in), retries are logged at INFO: the
    caller warns once if it falls back."""
    url = f"{api_url(http, repo_id, repo_type)}/revision/{quote(revision, safe='')}"
    quick = give_up_after is not None
    data, _ = http.retrying(
        label,
        url,
        lambda: _get_json(http, label, url, quick=quick),
        give_up_after=give_up_after,
        retry_level=logging.INFO if quick else logging.WARNING,
    )
    sha = data.get("sha") if isinstance(data, dict) else None
    return checked_commit(label, f"the Hub at {http.access.endpoint}", sha)


def list_files(
    http: HubHttp, label: str, repo_id: str, repo_type: str, commit: str
) -> list[RepoFile]:
    """Every file of ``commit`` (all pages of the recursive tree), each entry checked."""
    url: str | None = (
        f"{api_url(http, repo_id, repo_type)}/tree/{commit}?recursive=true&expand=false"
    )
    seen: set[str] = set()
    files: dict[str, RepoFile] = {}
    first_page = 0  # entries on the first page: every page but the last holds as many
    while url is not None:
        if len(seen) >= MAX_PAGES:
            raise PrefetchFailed(
                f"{label}: the Hub's file listing goes on past {MAX_PAGES} pages: more than "
                "any repo holds; refusing it"
            )
        seen.add(url)
        page, url = _get_page(http, label, url)
        if not isinstance(page, list) or not all(isinstance(e, dict) for e in page):
            raise PrefetchFailed(f"{label}: the Hub's file listing is not a list of entries")
        first_page = first_page or len(page)
        if url in seen:
            raise PrefetchFailed(
                f"{label}: the Hub's file listing pages in a loop (page {len(seen) + 1} "
                f"points back to {where(url)})"
            )
        if url is not None:
            _check_full_page(label, len(seen), len(page), first_page)
        for entry in page:
            if entry.get("type") == "file":
                file = checked_file(label, entry)
                if file.path in files:
                    raise PrefetchFailed(f"{label}: the Hub listed {file.path!r} twice")
                files[file.path] = file
    if (both := clash(files)) is not None:
        raise PrefetchFailed(f"{label}: the Hub listed {both!r} both as a file and as a folder")
    return list(files.values())


def _check_full_page(label: str, number: int, length: int, first_page: int) -> None:
    """PrefetchFailed for a page followed by another that is not full: the Hub fills every
    page but the last, and a listing of short pages (one entry each, a fresh cursor every
    time) would otherwise run for hours."""
    if length < MIN_PAGE:
        problem = f"holds {length} entries and yet a next page follows"
    elif length != first_page:
        problem = f"holds {length} entries where the first held {first_page}"
    else:
        return
    raise PrefetchFailed(
        f"{label}: page {number} of the Hub's file listing {problem}: the Hub fills every page "
        f"but the last (1000 entries, at least {MIN_PAGE}); not a listing the Hub sends"
    )


def _get_page(http: HubHttp, label: str, url: str) -> tuple[Any, str | None]:
    return http.retrying(label, url, lambda: _get_json(http, label, url))


def _get_json(
    http: HubHttp, label: str, url: str, *, quick: bool = False
) -> tuple[Any, str | None]:
    """One GET of a JSON answer: the body and the next page's URL (same origin only)."""
    with http.open(label, url, quick=quick) as response:
        response.read()
        try:
            body = response.json()
        except ValueError:
            raise PrefetchFailed(
                f"{label}: {where(url)} answered with something that is not JSON "
                f"({response.headers.get('content-type', 'no content type')})"
            ) from None
        next_url = response.links.get("next", {}).get("url")
    if not next_url:
        return body, None
    absolute = urljoin(url, next_url)
    if urlsplit(absolute)[:2] != urlsplit(url)[:2]:
        raise PrefetchFailed(
            f"{label}: the Hub's next page is on another origin: {where(absolute)}"
        )
    return body, absolute
