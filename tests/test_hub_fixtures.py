"""The local Hub against the real huggingface_hub client: it must answer what the library asks.

Each case runs the client in a subprocess (huggingface_hub reads HF_ENDPOINT at import).
The last tests show what plain huggingface_hub does with the faults entrykit survives.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hub_fixtures import LocalHub, generated_bytes


def run_client(
    hub: LocalHub, home: Path, code: str, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        env=hub.env(home, **env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def repos(local_hub: LocalHub) -> LocalHub:
    local_hub.add_repo(
        "acme/tiny",
        {
            "config.json": b'{"a": 1}',
            "nested/deep/file.txt": b"deep",
            "weights.safetensors": generated_bytes(2_000_000, 1),
        },
    )
    local_hub.add_repo("acme/private", {"a.txt": b"secret stuff"}, private=True)
    local_hub.add_repo("acme/gated", {"a.txt": b"gated stuff"}, gated=True)
    local_hub.add_repo("acme/data", {"train.csv": b"x,y\n"}, repo_type="dataset")
    local_hub.add_token("hf_good_token")
    local_hub.page_size = 2
    return local_hub


def test_snapshot_download_and_the_api_work_against_it(repos: LocalHub, hf_home: Path) -> None:
    code = """
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
import os
api = HfApi()
info = api.model_info("acme/tiny", revision="main")
print(info.sha, sorted(s.rfilename for s in info.siblings))
files = sorted(f.path for f in api.list_repo_tree("acme/tiny", recursive=True) if hasattr(f, "size"))
print(files)
path = snapshot_download("acme/tiny")
print(sorted(os.listdir(path)))
print(open(hf_hub_download("acme/data", "train.csv", repo_type="dataset")).read().strip())
print(open(hf_hub_download("acme/private", "a.txt", token="hf_good_token")).read())
"""
    result = run_client(repos, hf_home, code)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    sha = repos.sha("acme/tiny")
    assert lines[0] == f"{sha} ['config.json', 'nested/deep/file.txt', 'weights.safetensors']"
    assert lines[1] == "['config.json', 'nested/deep/file.txt', 'weights.safetensors']"
    assert lines[2] == "['config.json', 'nested', 'weights.safetensors']"
    assert lines[3:] == ["x,y", "secret stuff"]
    # Pagination was used (page size 2), and the LFS file came from the second origin.
    assert repos.count(f"/api/models/acme/tiny/tree/{sha}") >= 2
    assert repos.count("/lfs/*", origin="cdn") == 1


@pytest.mark.parametrize(
    ("call", "error"),
    [
        ('hf_hub_download("acme/nothing", "a.txt")', "RepositoryNotFoundError"),
        ('hf_hub_download("acme/tiny", "a.txt", revision="nope")', "RevisionNotFoundError"),
        ('hf_hub_download("acme/tiny", "missing.txt")', "RemoteEntryNotFoundError"),
        ('hf_hub_download("acme/private", "a.txt")', "RepositoryNotFoundError"),
        ('hf_hub_download("acme/gated", "a.txt")', "GatedRepoError"),
        ('hf_hub_download("acme/gated", "a.txt", token="hf_other")', "GatedRepoError"),
    ],
)
def test_refusals_are_the_errors_huggingface_hub_expects(
    repos: LocalHub, hf_home: Path, call: str, error: str
) -> None:
    code = f"""
from huggingface_hub import hf_hub_download
try:
    {call}
except Exception as error:
    print(type(error).__name__)
"""
    result = run_client(repos, hf_home, code)
    assert result.stdout.strip() == error, result.stderr


def test_range_requests_answer_206(repos: LocalHub) -> None:
    import httpx2

    sha256 = repos.files("acme/tiny")["weights.safetensors"].sha256
    response = httpx2.get(f"{repos.cdn_url}/lfs/{sha256}", headers={"Range": "bytes=10-19"})
    assert response.status_code == 206
    assert response.headers["content-range"] == "bytes 10-19/2000000"
    assert response.content == repos.files("acme/tiny")["weights.safetensors"].data[10:20]
    head = httpx2.head(f"{repos.url}/acme/tiny/resolve/main/weights.safetensors")
    assert head.status_code == 302
    assert head.headers["x-linked-etag"] == f'"{sha256}"'
    assert head.headers["x-linked-size"] == "2000000"
    assert head.headers["x-repo-commit"] == repos.sha("acme/tiny")


def test_a_moved_branch_serves_the_new_commit(repos: LocalHub) -> None:
    import httpx2

    first = repos.sha("acme/tiny")
    second = repos.commit("acme/tiny", {"config.json": b'{"a": 2}'})
    assert httpx2.get(f"{repos.url}/acme/tiny/resolve/main/config.json").content == b'{"a": 2}'
    assert httpx2.get(f"{repos.url}/acme/tiny/resolve/{first}/config.json").content == b'{"a": 1}'
    repos.move_branch("acme/tiny", "main", first)
    revision = httpx2.get(f"{repos.url}/api/models/acme/tiny/revision/main").json()
    assert revision["sha"] == first != second


# --- what plain huggingface_hub does with faults (the reasons entrykit exists) -------------


def test_plain_snapshot_download_fails_on_one_503_for_a_file(
    repos: LocalHub, hf_home: Path
) -> None:
    repos.inject("/acme/tiny/resolve/*/config.json", method="GET", status=503, times=1)
    code = 'from huggingface_hub import snapshot_download\nsnapshot_download("acme/tiny")'
    result = run_client(repos, hf_home, code)
    assert result.returncode != 0
    assert "503" in result.stderr


def test_plain_snapshot_download_leaves_nothing_to_resume_after_a_cut(
    repos: LocalHub, hf_home: Path
) -> None:
    # huggingface_hub retries a cut body within the process, but its partial file has a
    # random name and is deleted on failure: a new process always starts from zero.
    repos.inject("/lfs/*", cut_after=500_000, times=10)
    code = 'from huggingface_hub import snapshot_download\nsnapshot_download("acme/tiny")'
    result = run_client(repos, hf_home, code, HF_HUB_DOWNLOAD_TIMEOUT="2")
    assert result.returncode != 0
    assert not list((hf_home / "hub").rglob("*.incomplete"))
