"""A Hub (or mirror) that lies: every name it sends is checked before it touches the disk.

Each case runs ``entrykit prefetch`` as a real process against a local Hub whose answers the
test rewrites, and asserts exit 40 (10 for our own settings), at once (no retries, no
timeouts), and that no file appeared anywhere under the test's folder outside ``HF_HOME``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from entrykit_process import run_entrykit
from hub_fixtures import LocalHub
from prefetch_helpers import FAST, MODEL, access, add_model, cli_env, prefetch_cli, settings

from entrykit.errors import PrefetchFailed
from entrykit.hub.prefetch import prefetch_models

ESCAPE = "../../../../"  # from <HF_HOME>/hub/<repo>/blobs (or snapshots/<sha>) up to tmp_path
Tamper = Callable[[str, object, dict[str, str]], tuple[object, dict[str, str]]]


def files_outside(root: Path, home: Path) -> set[Path]:
    """Every file or link under ``root`` that is not under ``home`` (the secrets folder
    that `cli_env` makes is expected)."""
    return {
        path
        for path in root.rglob("*")
        if not path.is_dir() and home not in path.parents and path.parent.name != "secrets"
    }


def tree_entries(change: Callable[[dict[str, object]], None]) -> Tamper:
    """Apply ``change`` to the tree entry of ``config.json``."""

    def tamper(path: str, body: object, headers: dict[str, str]) -> tuple[object, dict[str, str]]:
        if "/tree/" in path and isinstance(body, list):
            for entry in body:
                if entry.get("path") == "config.json":
                    change(entry)
        return body, headers

    return tamper


def field(name: str, value: object) -> Tamper:
    return tree_entries(lambda entry: entry.__setitem__(name, value))


def lfs_oid(value: str) -> Tamper:
    def tamper(path: str, body: object, headers: dict[str, str]) -> tuple[object, dict[str, str]]:
        if "/tree/" in path and isinstance(body, list):
            for entry in body:
                if isinstance(entry.get("lfs"), dict):
                    entry["lfs"]["oid"] = value
        return body, headers

    return tamper


def commit_sha(value: object) -> Tamper:
    def tamper(path: str, body: object, headers: dict[str, str]) -> tuple[object, dict[str, str]]:
        if "/revision/" in path and isinstance(body, dict):
            body["sha"] = value
        return body, headers

    return tamper


def not_a_list(path: str, body: object, headers: dict[str, str]) -> tuple[object, dict[str, str]]:
    return ({"files": body} if "/tree/" in path else body), headers


def listed_twice(path: str, body: object, headers: dict[str, str]) -> tuple[object, dict[str, str]]:
    if "/tree/" in path and isinstance(body, list):
        body = [*body, *body]
    return body, headers


HOSTILE = {
    "blob oid that is a path": field("oid", ESCAPE + "x"),
    "blob oid of 40 characters that is a path": field("oid", (ESCAPE + "x" * 40)[:40]),
    "lfs oid that is a path": lfs_oid(ESCAPE + "y"),
    "commit of 40 characters that is a path": commit_sha((ESCAPE + "pwned" + "p" * 40)[:40]),
    "commit that is not a string": commit_sha(["a"] * 40),
    "path '.'": field("path", "."),
    "empty path": field("path", ""),
    "path with '..'": field("path", ESCAPE + "evil.txt"),
    "absolute path": field("path", "/tmp/evil.txt"),
    "path with a backslash": field("path", "..\\..\\evil.txt"),
    "path with an empty part": field("path", "a//b"),
    "negative size": field("size", -5),
    "size as text": field("size", "19"),
    "listing that is not a list": not_a_list,
    "path listed twice": listed_twice,
    "xet hash that is a path": field("xetHash", ESCAPE + "z"),
}


@pytest.mark.parametrize("tamper", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_hostile_answer_is_exit_40_at_once_with_nothing_written_outside(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path, tamper: Tamper
) -> None:
    add_model(local_hub)
    local_hub.tamper = tamper
    env = cli_env(local_hub, hf_home, tmp_path)

    started = time.monotonic()
    result = prefetch_cli([MODEL], env)

    assert result.returncode == 40, result.stderr
    assert time.monotonic() - started < 10
    assert "retry" not in result.stderr, result.stderr
    assert result.stdout == ""
    assert files_outside(tmp_path, hf_home) == set()
    assert not list(hf_home.rglob("snapshots/*/*")), "nothing is linked from a bad listing"


def self_link(path: str, body: object, headers: dict[str, str]) -> tuple[object, dict[str, str]]:
    if "/tree/" in path:
        headers = {**headers, "Link": f'<{path}?recursive=true&expand=false>; rel="next"'}
    return body, headers


def test_a_listing_whose_next_page_is_itself_is_exit_40_at_once(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path
) -> None:
    add_model(local_hub)
    local_hub.tamper = self_link
    result = prefetch_cli([MODEL], cli_env(local_hub, hf_home, tmp_path), timeout=20)
    assert result.returncode == 40, result.stderr
    assert "pages in a loop" in result.stderr
    assert local_hub.count("/api/models/*/tree/*") <= 2
    assert files_outside(tmp_path, hf_home) == set()


MANY = "acme/many"


def add_many(hub: LocalHub, count: int = 160, page_size: int = 50) -> str:
    """A repo of ``count`` small files: several pages of ``page_size`` entries."""
    hub.page_size = page_size
    return hub.add_repo(MANY, {f"f{i:03}.txt": b"%d\n" % i for i in range(count)})


def test_a_listing_of_full_pages_is_read_whole(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path
) -> None:
    add_many(local_hub)
    result = prefetch_cli([MANY], cli_env(local_hub, hf_home, tmp_path))
    assert result.returncode == 0, result.stderr
    assert local_hub.count("/api/models/*/tree/*") == 4  # 50 + 50 + 50 + 10
    assert len(list(Path(result.stdout.strip()).iterdir())) == 160


def test_a_listing_that_pages_in_a_circle_is_exit_40(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path
) -> None:
    add_many(local_hub)
    pages: dict[str, int] = {}

    def circle(path: str, body: object, headers: dict[str, str]) -> tuple[object, dict[str, str]]:
        if "/tree/" in path and "Link" in headers:
            pages[path] = pages.get(path, 0) + 1
            if pages[path] == 3:  # the third page leads back to the first
                headers = {**headers, "Link": f'<{path}?recursive=true&expand=false>; rel="next"'}
        return body, headers

    local_hub.tamper = circle
    result = prefetch_cli([MANY], cli_env(local_hub, hf_home, tmp_path), timeout=20)
    assert result.returncode == 40, result.stderr
    assert "pages in a loop (page 4 points back to" in result.stderr
    assert files_outside(tmp_path, hf_home) == set()


def test_a_listing_of_one_entry_pages_with_fresh_cursors_is_exit_40_at_the_first_page(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path
) -> None:
    add_model(local_hub)
    served = [0]

    def endless(path: str, body: object, headers: dict[str, str]) -> tuple[object, dict[str, str]]:
        if "/tree/" in path:
            served[0] += 1
            next_page = f"{local_hub.url}{path}?recursive=true&expand=false&cursor={served[0]}"
            headers = {**headers, "Link": f'<{next_page}>; rel="next"'}
            body = [{"type": "directory", "oid": "0" * 40, "size": 0, "path": f"d{served[0]}"}]
        return body, headers

    local_hub.tamper = endless
    started = time.monotonic()
    result = prefetch_cli([MODEL], cli_env(local_hub, hf_home, tmp_path), timeout=30)
    assert result.returncode == 40, result.stderr
    assert time.monotonic() - started < 10
    assert local_hub.count("/api/models/*/tree/*") == 1
    assert "page 1 of the Hub's file listing holds 1 entries and yet a next page" in result.stderr
    assert "loop" not in result.stderr


def test_a_short_page_before_the_last_is_exit_40(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path
) -> None:
    add_many(local_hub, page_size=60)  # pages of 60, 60 and 40

    def short_second(
        path: str, body: object, headers: dict[str, str]
    ) -> tuple[object, dict[str, str]]:
        if "/tree/" in path and isinstance(body, list) and body and body[0]["path"] == "f060.txt":
            body = body[1:]
        return body, headers

    local_hub.tamper = short_second
    result = prefetch_cli([MANY], cli_env(local_hub, hf_home, tmp_path), timeout=30)
    assert result.returncode == 40, result.stderr
    assert "page 2 of the Hub's file listing holds 59 entries where the first held 60" in (
        result.stderr
    )
    assert local_hub.count("/api/models/*/tree/*") == 2


def test_a_listing_past_the_page_cap_is_exit_40_saying_so(
    local_hub: LocalHub, hf_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from entrykit.hub import api

    add_many(local_hub)
    monkeypatch.setattr(api, "MAX_PAGES", 3)
    with pytest.raises(PrefetchFailed, match="goes on past 3 pages") as failed:
        prefetch_models(settings(MANY), access=access(local_hub, hf_home), policy=FAST)
    assert "loop" not in str(failed.value)


def test_metadata_that_is_not_json_is_exit_40_without_a_retry(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path
) -> None:
    add_model(local_hub)
    local_hub.inject("/api/models/*/revision/*", body=b"<html>a captive portal</html>", times=9)
    started = time.monotonic()
    result = prefetch_cli([MODEL], cli_env(local_hub, hf_home, tmp_path))
    assert result.returncode == 40, result.stderr
    assert "not JSON" in result.stderr
    assert local_hub.count("/api/models/*/revision/*") == 1
    assert time.monotonic() - started < 10
    assert files_outside(tmp_path, hf_home) == set()


@pytest.mark.parametrize("delta", [1000, -1000], ids=["shorter body", "longer body"])
def test_a_body_that_is_not_the_length_listed_is_exit_40_at_once(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path, delta: int
) -> None:
    add_model(local_hub)
    weights = local_hub.files(MODEL)["model.safetensors"].sha256
    local_hub.inject(f"/lfs/{weights}", length_delta=delta, times=50)
    started = time.monotonic()
    result = prefetch_cli([MODEL], cli_env(local_hub, hf_home, tmp_path), timeout=30)
    assert result.returncode == 40, result.stderr
    assert "announced" in result.stderr
    assert time.monotonic() - started < 10  # not a read timeout, not three minutes of retries
    assert files_outside(tmp_path, hf_home) == set()


@pytest.mark.parametrize(
    "endpoint",
    [
        "ftp://hub.example",
        "hub.example",
        "http://",
        "http://h:port",
        "file:///etc",
        "https://[::1",
        "http://exa mple.com",
        "http://127.0.0.1:{port}#x",
        "http://127.0.0.1:{port}?x=1",
    ],
)
def test_an_hf_endpoint_that_is_not_an_http_url_is_exit_10_at_once(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path, endpoint: str
) -> None:
    add_model(local_hub)
    port = local_hub.url.rsplit(":", 1)[1]
    endpoint = endpoint.format(port=port)  # a fragment would make the Hub's own URL a 404
    env = cli_env(local_hub, hf_home, tmp_path, HF_ENDPOINT=endpoint)
    started = time.monotonic()
    result = prefetch_cli([MODEL], env, timeout=20)
    assert result.returncode == 10, result.stderr
    assert f"HF_ENDPOINT (env): {endpoint!r} is not an http(s) URL" in result.stderr
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < 10
    assert local_hub.requests == []


@pytest.mark.parametrize(
    "spec", ["o/n@../../../pwned", "o/n@/etc/passwd", "o/n@a//b", "o/n@a\\b", "o/n@refs/../x"]
)
def test_a_revision_that_could_leave_the_cache_is_exit_10_in_prefetch_and_plan(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path, spec: str
) -> None:
    env = cli_env(local_hub, hf_home, tmp_path)
    result = prefetch_cli([spec], env)
    assert result.returncode == 10, result.stderr
    assert local_hub.requests == []
    planned = run_entrykit(["plan"], {**env, "ENTRYKIT_HF_MODELS": spec})
    assert planned.returncode == 10, planned.stderr
    assert files_outside(tmp_path, hf_home) == set()
    assert not any(hf_home.rglob("*"))


def test_a_redirect_away_from_http_is_exit_40_at_once(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path
) -> None:
    add_model(local_hub)
    local_hub.inject(
        "*/resolve/*", status=302, headers={"Location": "file:///etc/passwd"}, times=100
    )
    started = time.monotonic()
    result = prefetch_cli([MODEL], cli_env(local_hub, hf_home, tmp_path))
    assert result.returncode == 40, result.stderr
    assert "non-HTTP" in result.stderr
    assert time.monotonic() - started < 10
    assert files_outside(tmp_path, hf_home) == set()
