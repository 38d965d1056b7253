"""The storage host (where ``/resolve`` redirects LFS files) refusing a signed URL: resolved
once more through the Hub, small files and ranged ones alike, and never reported as the repo
being refused."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hub_fixtures import LocalHub, generated_bytes
from prefetch_helpers import MODEL, cli_env, prefetch_cli

SMALL = 2_000_000  # one piece
BIG = 40_000_000  # parallel ranges


def _repo(hub: LocalHub, size: int) -> str:
    hub.add_repo(MODEL, {"weights.safetensors": generated_bytes(size, seed=7)})
    return hub.files(MODEL)["weights.safetensors"].sha256


@pytest.mark.parametrize("size", [SMALL, BIG])
@pytest.mark.parametrize("status", [401, 403, 404, 410])
def test_one_refusal_by_the_storage_host_is_resolved_again_through_the_hub(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path, size: int, status: int
) -> None:
    sha256 = _repo(local_hub, size)
    local_hub.inject(f"/lfs/{sha256}", origin="cdn", status=status, times=1)
    done = prefetch_cli([MODEL], cli_env(local_hub, hf_home, tmp_path))
    assert done.returncode == 0, done.stderr
    assert (
        local_hub.count("*/resolve/*", method="GET") + local_hub.count("*/resolve/*", method="HEAD")
        == 2
    )
    weights = Path(done.stdout.strip()) / "weights.safetensors"
    assert weights.stat().st_size == size


@pytest.mark.parametrize("size", [SMALL, BIG])
@pytest.mark.parametrize("status", [403, 404, 410])
def test_a_storage_host_that_keeps_refusing_is_exit_40_and_not_a_refused_repo(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path, size: int, status: int
) -> None:
    sha256 = _repo(local_hub, size)
    local_hub.inject(f"/lfs/{sha256}", origin="cdn", status=status, times=1000)
    started = time.monotonic()
    done = prefetch_cli([MODEL], cli_env(local_hub, hf_home, tmp_path))
    assert done.returncode == 40, done.stderr
    assert time.monotonic() - started < 20
    assert "the storage host http://127.0.0.1" in done.stderr
    assert f"refused the file (HTTP {status})" in done.stderr
    assert "a new URL from the Hub did not help" in done.stderr
    for wrong in ("repo not found", "token lacks", "access refused"):
        assert wrong not in done.stderr


@pytest.mark.parametrize(
    ("token", "says"),
    [(None, "needs a token with read access"), ("hf_sometoken", "the token lacks read access")],
)
def test_a_403_from_the_hub_itself_is_a_refused_repo_that_says_what_to_do(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path, token: str | None, says: str
) -> None:
    _repo(local_hub, SMALL)
    local_hub.inject("/api/models/*/revision/*", status=403, times=1)
    env = cli_env(local_hub, hf_home, tmp_path, **({"HF_TOKEN": token} if token else {}))
    done = prefetch_cli([MODEL], env)
    assert done.returncode == 42, done.stderr
    assert says in done.stderr
    assert ("no token was sent" in done.stderr) is (token is None)
