"""A cache that already holds symlinks entrykit did not make: none is ever written through.

Each case plants a link in the cache (a partial file, a blob, a folder of the repo, the lock
folder) pointing outside it, runs ``entrykit prefetch`` against the local Hub, and checks
that the outside file or folder is untouched: a link where a file of ours belongs is
replaced, a linked folder is exit 40 naming it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from hub_fixtures import LocalHub
from prefetch_helpers import MODEL, add_model, cli_env, prefetch_cli, snapshot

PRECIOUS = b"precious data\n"


def repo_folder(home: Path) -> Path:
    return home / "hub" / "models--acme--encoder"


def weights_etag(hub: LocalHub) -> str:
    sha256 = hub.files(MODEL)["pytorch_model.bin"].sha256
    assert sha256 is not None
    return sha256


@pytest.mark.parametrize("name", ["{etag}.incomplete", "{etag}", "{etag}.0a1b2c.incomplete"])
def test_a_link_where_a_blob_or_partial_file_belongs_is_replaced_never_written_through(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path, name: str
) -> None:
    add_model(local_hub)
    etag = weights_etag(local_hub)
    victim = tmp_path / "victim.bin"
    victim.write_bytes(PRECIOUS)
    blobs = repo_folder(hf_home) / "blobs"
    blobs.mkdir(parents=True)
    (blobs / name.format(etag=etag)).symlink_to(victim)
    local_dir = tmp_path / "ld"

    done = prefetch_cli(
        [MODEL, "--local-dir", str(local_dir)], cli_env(local_hub, hf_home, tmp_path)
    )

    assert done.returncode == 0, done.stderr
    assert victim.read_bytes() == PRECIOUS
    blob = blobs / etag
    assert not blob.is_symlink()
    assert blob.read_bytes() == local_hub.files(MODEL)["pytorch_model.bin"].data
    placed = local_dir / "pytorch_model.bin"
    assert not placed.is_symlink()
    assert os.path.samefile(placed, blob)
    assert not list(blobs.glob("*.incomplete"))


def test_a_blob_linked_to_a_file_of_the_right_size_is_fetched_again(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path
) -> None:
    add_model(local_hub)
    etag = weights_etag(local_hub)
    victim = tmp_path / "victim.bin"
    victim.write_bytes(b"x" * len(local_hub.files(MODEL)["pytorch_model.bin"].data))
    first = prefetch_cli([MODEL], cli_env(local_hub, hf_home, tmp_path))
    assert first.returncode == 0, first.stderr
    blob = repo_folder(hf_home) / "blobs" / etag
    blob.unlink()
    blob.symlink_to(victim)  # stat() sees a blob of the right size through it

    done = prefetch_cli(
        [MODEL, "--local-dir", str(tmp_path / "ld")], cli_env(local_hub, hf_home, tmp_path)
    )

    assert done.returncode == 0, done.stderr
    assert not blob.is_symlink()
    assert victim.read_bytes() == b"x" * victim.stat().st_size
    assert not (tmp_path / "ld" / "pytorch_model.bin").is_symlink()


def _snapshot_subfolder(home: Path, commit: str) -> Path:
    return snapshot(home, MODEL, commit) / "tokenizer"


LINKED_FOLDERS: dict[str, Callable[[Path, str], Path]] = {
    "a snapshot subfolder": _snapshot_subfolder,
    "the snapshot folder": lambda home, commit: snapshot(home, MODEL, commit),
    "snapshots": lambda home, commit: repo_folder(home) / "snapshots",
    "blobs": lambda home, commit: repo_folder(home) / "blobs",
    "trees": lambda home, commit: repo_folder(home) / "trees",
    "refs": lambda home, commit: repo_folder(home) / "refs",
    ".locks": lambda home, commit: home / "hub" / ".locks",
    "the repo's lock folder": lambda home, commit: home / "hub" / ".locks" / repo_folder(home).name,
}


@pytest.mark.parametrize("where", LINKED_FOLDERS.values(), ids=LINKED_FOLDERS.keys())
def test_a_linked_folder_in_the_cache_is_exit_40_naming_it_with_nothing_written_outside(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path, where: Callable[[Path, str], Path]
) -> None:
    commit = add_model(local_hub)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link = where(hf_home, commit)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(elsewhere)

    done = prefetch_cli([MODEL], cli_env(local_hub, hf_home, tmp_path))

    assert done.returncode == 40, done.stderr
    assert f"{link} is a symlink" in done.stderr
    errors = [line for line in done.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1, done.stderr
    assert list(elsewhere.iterdir()) == []


def test_a_linked_lock_file_is_never_truncated(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path
) -> None:
    add_model(local_hub)
    victim = tmp_path / "victim.txt"
    victim.write_bytes(PRECIOUS)
    locks = hf_home / "hub" / ".locks" / repo_folder(hf_home).name
    locks.mkdir(parents=True)
    lock = locks / f"{weights_etag(local_hub)}.lock"
    lock.symlink_to(victim)

    done = prefetch_cli([MODEL], cli_env(local_hub, hf_home, tmp_path))

    assert done.returncode == 40, done.stderr
    assert f"{lock} is a symlink" in done.stderr
    assert victim.read_bytes() == PRECIOUS


def test_huggingface_hubs_own_links_are_followed_on_a_second_run(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path
) -> None:
    commit = add_model(local_hub)
    env = cli_env(local_hub, hf_home, tmp_path)
    assert prefetch_cli([MODEL], env).returncode == 0
    pointer = snapshot(hf_home, MODEL, commit) / "tokenizer" / "vocab.txt"
    assert os.readlink(pointer).startswith("../../../blobs/")
    local_hub.reset_counts()
    again = prefetch_cli([MODEL], env)
    assert again.returncode == 0, again.stderr
    assert local_hub.count("/lfs/*") == 0 and local_hub.count("*/resolve/*") == 0


def test_a_warm_cache_whose_blobs_folder_is_a_link_is_exit_40_with_nothing_removed_there(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path
) -> None:
    add_model(local_hub)
    env = cli_env(local_hub, hf_home, tmp_path)
    assert prefetch_cli([MODEL], env).returncode == 0
    blobs = repo_folder(hf_home) / "blobs"
    elsewhere = tmp_path / "elsewhere"
    blobs.rename(elsewhere)
    blobs.symlink_to(elsewhere)
    keep = elsewhere / f"{'a' * 40}.incomplete"  # would be swept as a dead partial file
    keep.write_bytes(PRECIOUS)

    done = prefetch_cli([MODEL], env)

    assert done.returncode == 40, done.stderr
    assert f"{blobs} is a symlink" in done.stderr
    assert keep.read_bytes() == PRECIOUS
