"""What a user hands to prefetch, checked before anything touches the disk: the lock file
(often edited by hand), repo paths in listings, local dirs, options of the Python API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hub_fixtures import LocalHub
from prefetch_helpers import MODEL, add_model, cli_env, prefetch_cli

from entrykit.hub.names import path_problem

COMMIT = "a" * 40
SHA1 = "b" * 40


def _entry(**changes: object) -> dict[str, object]:
    entry: dict[str, object] = {
        "repo": MODEL,
        "type": "model",
        "revision": "main",
        "commit": COMMIT,
        "include": [],
        "exclude": [],
        "files": [{"path": "config.json", "size": 3, "blob_id": SHA1}],
    }
    entry.update(changes)
    return {key: value for key, value in entry.items() if value is not _DROP}


_DROP = object()
_FILE = {"path": "config.json", "size": 3, "blob_id": SHA1}


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"version": 1, "repos": [_entry(commit="../../../../../../etc")]}, "repos[0].commit"),
        ({"version": 1, "repos": [_entry(commit="../../x", files=[])]}, "repos[0].commit"),
        ({"version": 1, "repos": [_entry(repo="../../x")]}, "repos[0].repo"),
        ({"version": 1, "repos": [_entry(repo="acme/x@main")]}, "repos[0].repo"),
        ({"version": 1, "repos": [_entry(type="evil")]}, "repos[0].type"),
        ({"version": 1, "repos": [_entry(revision=5)]}, "repos[0].revision"),
        ({"version": 1, "repos": [_entry(revision="../../x")]}, "repos[0].revision"),
        ({"version": 1, "repos": [_entry(files=[{**_FILE, "size": -1}])]}, "files[0].size"),
        ({"version": 1, "repos": [_entry(files=[{**_FILE, "size": True}])]}, "files[0].size"),
        (
            {"version": 1, "repos": [_entry(files=[{**_FILE, "blob_id": "../../../../x"}])]},
            "files[0].blob_id",
        ),
        ({"version": 1, "repos": [_entry(files=[{**_FILE, "path": "../x"}])]}, "files[0].path"),
        ({"version": 1, "repos": [_entry(files=[{**_FILE, "path": "C:x"}])]}, "files[0].path"),
        ({"version": 1, "repos": [_entry(files=[{**_FILE, "sha256": "x"}])]}, "files[0].sha256"),
        ({"version": 1, "repos": [_entry(files=[_FILE, _FILE])]}, "listed twice"),
        ({"version": 1, "repos": [_entry(include="*.json")]}, "repos[0].include"),
        ({"version": 1, "repos": [_entry(files=_DROP)]}, "repos[0].files"),
        ({"version": 1, "repos": [_entry(), _entry()]}, "listed twice"),
        ({"version": 1, "repos": ["acme/encoder"]}, "repos[0]"),
        ({"version": 1, "repos": {}}, "repos"),
        ({"version": 2, "repos": []}, "version"),
        ([], "the top level"),
    ],
)
def test_a_bad_lock_file_is_exit_40_naming_the_field_before_the_disk_is_touched(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path, body: Any, named: str
) -> None:
    add_model(local_hub)
    lock = tmp_path / "models.lock.json"
    lock.write_text(json.dumps(body))
    env = cli_env(local_hub, hf_home, tmp_path)
    for args in (["--lock", str(lock)], [MODEL, "--lock", str(lock)]):
        done = prefetch_cli(args, env)
        assert done.returncode == 40, done.stderr
        assert f"lock file {lock} is not valid" in done.stderr
        assert named in done.stderr
        assert done.stdout == ""
        assert "Traceback" not in done.stderr
    assert not (hf_home / "hub").exists()
    assert local_hub.requests == []
    assert not (tmp_path / "etc").exists()


@pytest.mark.parametrize("path", ["C:evil.txt", "a/c:evil.txt", "C:", "x/Z:/y"])
def test_any_part_starting_with_a_drive_letter_is_refused(path: str) -> None:
    assert path_problem(path) is not None


@pytest.mark.parametrize("path", ["config.json", "a/bb:c.txt", "ab:c", "1:x"])
def test_a_colon_elsewhere_is_a_plain_name(path: str) -> None:
    assert path_problem(path) is None
