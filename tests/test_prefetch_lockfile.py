"""Prefetch without the Hub in the loop: the lock file (pins, no request when warm), --verify
and --offline, against the local Hub and real files."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hub_fixtures import LocalHub
from prefetch_helpers import (
    DATASET,
    FAST,
    MODEL,
    access,
    add_dataset,
    add_model,
    cli_env,
    prefetch_cli,
    settings,
    snapshot,
)

from entrykit.errors import PrefetchFailed
from entrykit.hub.prefetch import prefetch_models

MODEL_FILES = ["config.json", "model.safetensors", "tokenizer/vocab.txt"]
DATASET_FILES = ["data/test-00000.parquet", "data/train-00000.parquet"]


def test_cli_writes_a_lock_file_and_a_warm_start_with_it_makes_no_request(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path
) -> None:
    first = add_model(local_hub)
    add_dataset(local_hub)
    lock = tmp_path / "models.lock.json"
    env = cli_env(local_hub, hf_home, tmp_path)
    specs = [f"{MODEL}@main", f"dataset:{DATASET}"]

    cold = prefetch_cli([*specs, "--exclude", "*.bin", "--lock", str(lock)], env)
    assert cold.returncode == 0, cold.stderr
    data = json.loads(lock.read_text())
    model_entry = data["repos"][0]
    assert (model_entry["repo"], model_entry["revision"], model_entry["commit"]) == (
        MODEL,
        "main",
        first,
    )
    weights = next(f for f in model_entry["files"] if f["path"] == "model.safetensors")
    assert weights == {
        "path": "model.safetensors",
        "size": 3_000_000,
        "blob_id": local_hub.files(MODEL)["model.safetensors"].sha1,
        "sha256": local_hub.files(MODEL)["model.safetensors"].sha256,
    }
    assert {f["path"] for f in model_entry["files"]} == set(MODEL_FILES)

    # The branch moves on the Hub: with the lock, the start is pinned and silent.
    local_hub.commit(MODEL, {"config.json": b'{"hidden_size": 16}\n'})
    local_hub.reset_counts()
    lock_before = lock.read_text()
    warm = prefetch_cli([*specs, "--exclude", "*.bin", "--lock", str(lock)], env)
    assert warm.returncode == 0, warm.stderr
    assert local_hub.requests == []
    assert lock.read_text() == lock_before
    assert "pinned by the lock file" in warm.stderr
    assert "from the cache" in warm.stderr

    # With no spec, the lock file's repos are prefetched; still no request.
    again = prefetch_cli(["--lock", str(lock)], env)
    assert again.returncode == 0, again.stderr
    assert local_hub.requests == []


def test_without_a_lock_a_branch_costs_one_request_and_follows_the_hub(
    local_hub: LocalHub, hf_home: Path
) -> None:
    first = add_model(local_hub)
    hub = access(local_hub, hf_home)
    config = settings(MODEL, exclude=["*.bin"])
    prefetch_models(config, access=hub, policy=FAST)
    local_hub.reset_counts()
    assert prefetch_models(config, access=hub, policy=FAST).repos[0].source == "cache"
    assert [r.path for r in local_hub.requests] == [f"/api/models/{MODEL}/revision/main"]

    second = local_hub.commit(MODEL, {"config.json": b'{"hidden_size": 16}\n'})
    local_hub.reset_counts()
    report = prefetch_models(config, access=hub, policy=FAST)

    assert report.repos[0].commit == second
    assert (
        snapshot(hf_home, MODEL, second) / "config.json"
    ).read_bytes() == b'{"hidden_size": 16}\n'
    assert (snapshot(hf_home, MODEL, first) / "config.json").read_bytes() == b'{"hidden_size": 8}\n'
    # Only the changed file crossed the network; the weights' blob is shared.
    assert local_hub.count("/api/*") == 2
    assert local_hub.count("*/resolve/*") == 1
    assert local_hub.count(origin="cdn") == 0


def test_a_commit_revision_with_a_cached_listing_makes_no_request(
    local_hub: LocalHub, hf_home: Path
) -> None:
    sha = add_model(local_hub)
    config = settings(f"{MODEL}@{sha}")
    prefetch_models(config, access=access(local_hub, hf_home), policy=FAST)
    local_hub.reset_counts()
    report = prefetch_models(config, access=access(local_hub, hf_home), policy=FAST)
    assert report.repos[0].source == "cache"
    assert local_hub.requests == []


def corrupt(path: Path, how: str) -> None:
    blob = path.resolve()
    data = bytearray(blob.read_bytes())
    if how == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 3] ^= 0x01
    blob.write_bytes(bytes(data))


def test_verify_catches_a_truncated_and_a_bit_flipped_blob(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path
) -> None:
    sha = add_model(local_hub)
    add_dataset(local_hub)
    lock = tmp_path / "models.lock.json"
    env = cli_env(local_hub, hf_home, tmp_path)
    specs = [MODEL, f"dataset:{DATASET}", "--exclude", "*.bin"]
    assert prefetch_cli([*specs, "--lock", str(lock)], env).returncode == 0
    good = prefetch_cli([*specs, "--lock", str(lock), "--verify"], env)
    assert good.returncode == 0, good.stderr
    assert "verified" in good.stderr

    model_dir = snapshot(hf_home, MODEL, sha)
    corrupt(model_dir / "model.safetensors", "flip")  # LFS: same size, sha256 differs
    corrupt(model_dir / "tokenizer" / "vocab.txt", "truncate")  # git file: size differs
    local_hub.reset_counts()

    with_lock = prefetch_cli([*specs, "--lock", str(lock), "--verify"], env)
    without_lock = prefetch_cli([*specs, "--verify"], env)

    for result in (with_lock, without_lock):
        assert result.returncode == 40, result.stderr
        assert "model.safetensors: sha256 differs" in result.stderr
        assert "tokenizer/vocab.txt: 1694 bytes, expected 3389" in result.stderr
        assert "config.json" not in result.stderr
    assert local_hub.requests == []  # verify is offline


def test_verify_reports_a_missing_file_and_a_repo_never_fetched(
    local_hub: LocalHub, hf_home: Path
) -> None:
    sha = add_model(local_hub)
    hub = access(local_hub, hf_home)
    prefetch_models(settings(MODEL), access=hub, policy=FAST)
    (snapshot(hf_home, MODEL, sha) / "config.json").unlink()

    with pytest.raises(PrefetchFailed, match=r"config\.json: missing"):
        prefetch_models(settings(MODEL), access=hub, verify=True)
    with pytest.raises(PrefetchFailed, match="not in the cache"):
        prefetch_models(settings("acme/other"), access=hub, verify=True)


def test_offline_uses_the_cache_only(local_hub: LocalHub, hf_home: Path, tmp_path: Path) -> None:
    add_model(local_hub)
    env = cli_env(local_hub, hf_home, tmp_path)
    cold = prefetch_cli([MODEL, "--offline"], env)
    assert cold.returncode == 40
    assert "not in the cache" in cold.stderr
    assert prefetch_cli([MODEL, "--include", "*.json"], env).returncode == 0
    local_hub.reset_counts()

    assert prefetch_cli([MODEL, "--include", "*.json", "--offline"], env).returncode == 0
    partial = prefetch_cli([MODEL, "--offline"], env)  # the weights were never fetched
    assert partial.returncode == 40
    assert "model.safetensors" in partial.stderr
    hub_offline = prefetch_cli([MODEL], {**env, "HF_HUB_OFFLINE": "1"})  # the library's switch
    assert hub_offline.returncode == 40
    assert "model.safetensors" in hub_offline.stderr
    assert local_hub.requests == []


def test_a_lock_file_pins_new_patterns_to_its_commit_and_takes_new_specs(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path
) -> None:
    first = add_model(local_hub)
    dataset_sha = add_dataset(local_hub)
    lock = tmp_path / "models.lock.json"
    hub = access(local_hub, hf_home)
    prefetch_models(settings(MODEL, include=["*.json"], lockfile=lock), access=hub, policy=FAST)
    local_hub.commit(MODEL, {"config.json": b"{}"})
    local_hub.reset_counts()

    report = prefetch_models(
        settings(MODEL, f"dataset:{DATASET}", include=["*.json", "*.txt", "data/"], lockfile=lock),
        access=hub,
        policy=FAST,
    )

    # Still the locked commit: its listing is in the cache, only the new file was fetched.
    assert [r.commit for r in report.repos] == [first, dataset_sha]
    assert local_hub.count(f"/api/models/{MODEL}/*") == 0
    assert local_hub.count(f"/{MODEL}/resolve/{first}/tokenizer/vocab.txt") == 1
    entries = json.loads(lock.read_text())["repos"]
    assert [(e["repo"], e["commit"]) for e in entries] == [(MODEL, first), (DATASET, dataset_sha)]
    assert entries[0]["include"] == ["*.json", "*.txt", "data/"]


def test_a_broken_lock_file_is_exit_40(local_hub: LocalHub, hf_home: Path, tmp_path: Path) -> None:
    add_model(local_hub)
    lock = tmp_path / "models.lock.json"
    lock.write_text('{"version": 1, "repos": [{"repo": "acme/encoder"}]}')
    result = prefetch_cli([MODEL, "--lock", str(lock)], cli_env(local_hub, hf_home, tmp_path))
    assert result.returncode == 40
    assert f"the lock file {lock} is not valid" in result.stderr
    assert local_hub.requests == []


def _fifo(folder: Path) -> Path:
    path = folder / "models.lock.json"
    os.mkfifo(path)
    return path


SPECIAL_LOCK_FILES = {
    "a FIFO": (_fifo, "a FIFO"),
    "/dev/zero": (lambda folder: Path("/dev/zero"), "a character device"),
    "a folder": (lambda folder: folder, "a folder"),
}


@pytest.mark.parametrize("how", ["--lock", "ENTRYKIT_HF_LOCKFILE"])
@pytest.mark.parametrize(
    ("make", "kind"), SPECIAL_LOCK_FILES.values(), ids=SPECIAL_LOCK_FILES.keys()
)
def test_a_lock_file_that_is_not_a_regular_file_is_exit_40_at_once_naming_it(
    local_hub: LocalHub,
    hf_home: Path,
    tmp_path: Path,
    make: Callable[[Path], Path],
    kind: str,
    how: str,
) -> None:
    add_model(local_hub)
    lock = make(tmp_path)
    env = cli_env(local_hub, hf_home, tmp_path)
    if how == "--lock":
        args = [MODEL, "--lock", str(lock)]
    else:
        args, env = [MODEL], {**env, "ENTRYKIT_HF_LOCKFILE": str(lock)}
    started = time.monotonic()
    result = prefetch_cli(args, env, timeout=20)
    assert result.returncode == 40, result.stderr
    assert time.monotonic() - started < 10
    assert f"the lock file {lock} is not a regular file but {kind}" in result.stderr
    assert local_hub.requests == []


def test_a_lock_file_larger_than_any_lock_file_is_exit_40(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from entrykit.hub import lockfile

    add_model(local_hub)
    lock = tmp_path / "models.lock.json"
    lock.write_text(" " * 2000 + "{}")
    monkeypatch.setattr(lockfile, "MAX_LOCK_BYTES", 1000)
    with pytest.raises(PrefetchFailed, match="is larger than"):
        prefetch_models(
            settings(MODEL, lockfile=lock), access=access(local_hub, hf_home), policy=FAST
        )
    assert local_hub.requests == []
