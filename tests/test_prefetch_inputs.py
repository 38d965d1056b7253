"""What a user hands to prefetch, checked before anything touches the disk: the lock file
(often edited by hand), repo paths in listings, local dirs, options of the Python API."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from entrykit_process import clean_env, run_entrykit
from hub_fixtures import LocalHub
from hub_server import Tamper
from prefetch_helpers import MODEL, add_model, cli_env, prefetch_cli, run_python

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


# --- listings: never cached before they are found right ----------------------------------


def _config_size(delta: int) -> Tamper:
    def tamper(path: str, body: object, headers: dict[str, str]) -> tuple[object, dict[str, str]]:
        if "/tree/" in path and isinstance(body, list):
            for entry in body:
                if entry.get("path") == "config.json":
                    entry["size"] += delta
        return body, headers

    return tamper


def _tokenizer_is_a_file_too(
    path: str, body: object, headers: dict[str, str]
) -> tuple[object, dict[str, str]]:
    if "/tree/" in path and isinstance(body, list):
        body = [*body, {"type": "file", "path": "tokenizer", "oid": SHA1, "size": 3}]
    return body, headers


def test_a_listing_with_a_wrong_size_is_not_cached_and_the_next_run_asks_again(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path
) -> None:
    commit = add_model(local_hub)
    env = cli_env(local_hub, hf_home, tmp_path)
    local_hub.tamper = _config_size(+1)
    bad = prefetch_cli([MODEL], env)
    assert bad.returncode == 40, bad.stderr
    assert "config.json" in bad.stderr
    trees = hf_home / "hub" / "models--acme--encoder" / "trees"
    assert not (trees / f"{commit}.json").exists()
    local_hub.tamper = None  # the Hub is fixed
    good = prefetch_cli([MODEL], env)
    assert good.returncode == 0, good.stderr
    assert (trees / f"{commit}.json").exists()


def test_a_wrong_cached_listing_is_dropped_and_force_asks_the_hub_again(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path
) -> None:
    commit = add_model(local_hub)
    env = cli_env(local_hub, hf_home, tmp_path)
    assert prefetch_cli([MODEL, "--exclude", "*.bin"], env).returncode == 0
    # A listing cached wrong (by an older run, or by hand), and config.json not yet cached.
    repo = hf_home / "hub" / "models--acme--encoder"
    tree = repo / "trees" / f"{commit}.json"
    data = json.loads(tree.read_text())
    right = data["files"]["config.json"]["size"]
    data["files"]["config.json"]["size"] = right + 1
    tree.write_text(json.dumps(data))
    (repo / "snapshots" / commit / "config.json").unlink()
    forced = prefetch_cli([MODEL, "--exclude", "*.bin", "--force"], env)
    assert forced.returncode == 0, forced.stderr
    assert json.loads(tree.read_text())["files"]["config.json"]["size"] == right

    tree.write_text(json.dumps(data))
    (repo / "snapshots" / commit / "config.json").unlink()
    once = prefetch_cli([MODEL, "--exclude", "*.bin"], env)
    assert once.returncode == 40, once.stderr
    assert not tree.exists()
    again = prefetch_cli([MODEL, "--exclude", "*.bin"], env)
    assert again.returncode == 0, again.stderr


def test_a_file_folder_clash_in_a_listing_is_exit_40_naming_it_with_no_leftovers(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path
) -> None:
    add_model(local_hub)
    env = cli_env(local_hub, hf_home, tmp_path)
    local_hub.tamper = _tokenizer_is_a_file_too
    for _ in range(2):
        done = prefetch_cli([MODEL], env)
        assert done.returncode == 40, done.stderr
        assert "'tokenizer' both as a file and as a folder" in done.stderr
        assert "IsADirectoryError" not in done.stderr
    assert not list(hf_home.rglob("trees/*.json"))
    assert not [p for p in hf_home.rglob("*") if p.name.endswith((".link", ".tmp"))]
    local_hub.tamper = None
    assert prefetch_cli([MODEL], env).returncode == 0


# --- local dirs --------------------------------------------------------------------------


def test_two_repos_with_one_local_dir_are_exit_10_naming_both(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path
) -> None:
    add_model(local_hub)
    local_hub.add_repo("acme/other", {"config.json": b"{}"})
    folder = tmp_path / "models"
    (tmp_path / "entrykit.toml").write_text(
        "[[models]]\n"
        f'repo = "{MODEL}"\nlocal_dir = "{folder}"\n'
        "[[models]]\n"
        f'repo = "acme/other"\nlocal_dir = "{tmp_path}/./models/"\n'
    )
    done = run_entrykit(["prefetch"], cli_env(local_hub, hf_home, tmp_path), cwd=tmp_path)
    assert done.returncode == 10, done.stderr
    assert MODEL in done.stderr and "acme/other" in done.stderr
    assert "share a folder" in done.stderr
    assert not folder.exists()


def test_a_spec_given_twice_is_fetched_once_and_printed_once_per_spec(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path
) -> None:
    add_model(local_hub)
    local_hub.add_repo("acme/other", {"config.json": b"{}"})
    done = prefetch_cli([MODEL, "acme/other", MODEL], cli_env(local_hub, hf_home, tmp_path))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 3
    assert lines[0] == lines[2] != lines[1]
    assert "models--acme--other" in lines[1]
    assert local_hub.count("*/resolve/*/model.safetensors", method="GET") == 1


def test_local_dir_with_a_lock_file_and_no_spec_takes_the_lock_files_repo(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path
) -> None:
    add_model(local_hub)
    env = cli_env(local_hub, hf_home, tmp_path)
    lock = tmp_path / "models.lock.json"
    assert prefetch_cli([MODEL, "--lock", str(lock)], env).returncode == 0
    folder = tmp_path / "enc"
    done = prefetch_cli(["--lock", str(lock), "--local-dir", str(folder)], env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(folder)
    assert (folder / "tokenizer" / "vocab.txt").is_file()

    local_hub.add_repo("acme/other", {"config.json": b"{}"})
    two = tmp_path / "two.lock.json"
    assert prefetch_cli([MODEL, "acme/other", "--lock", str(two)], env).returncode == 0
    refused = prefetch_cli(["--lock", str(two), "--local-dir", str(folder)], env)
    assert refused.returncode == 10, refused.stderr
    assert "takes exactly one repo, not 2 (from the lock file" in refused.stderr


@pytest.mark.parametrize("link", ["tokenizer", ".cache"])
def test_a_symlinked_folder_inside_the_local_dir_is_never_followed(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path, link: str
) -> None:
    add_model(local_hub)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    folder = tmp_path / "enc"
    folder.mkdir()
    (folder / link).symlink_to(elsewhere)
    done = prefetch_cli([MODEL, "--local-dir", str(folder)], cli_env(local_hub, hf_home, tmp_path))
    assert done.returncode == 40, done.stderr
    assert f"{folder / link} is a symlink" in done.stderr
    assert list(elsewhere.iterdir()) == []


def test_a_local_dir_that_is_itself_a_symlink_is_fine(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path
) -> None:
    add_model(local_hub)
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "enc").symlink_to(real)
    done = prefetch_cli(
        [MODEL, "--local-dir", str(tmp_path / "enc")], cli_env(local_hub, hf_home, tmp_path)
    )
    assert done.returncode == 0, done.stderr
    assert (real / "tokenizer" / "vocab.txt").is_file()


# --- a full file system under the local dir ----------------------------------------------


@pytest.fixture
def small_volume(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Mount tmpfs volumes (``mount -o OPTIONS``) under ``tmp_path``; needs root."""
    mounted: list[Path] = []

    def mount(options: str) -> Path:
        folder = tmp_path / f"volume{len(mounted)}"
        folder.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
            capture_output=True,
            check=False,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr!r}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_local_dir_on_a_small_file_system_is_exit_41_before_anything_is_fetched(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path, small_volume: Callable[[str], Path]
) -> None:
    add_model(local_hub)
    folder = small_volume("size=1m") / "enc"
    done = prefetch_cli([MODEL, "--local-dir", str(folder)], cli_env(local_hub, hf_home, tmp_path))
    assert done.returncode == 41, done.stderr
    assert f"more in {folder}, but its file system has" in done.stderr
    assert "Errno" not in done.stderr
    assert local_hub.count("*/resolve/*") == 0


def test_a_local_dir_that_fills_up_while_placing_is_exit_41_in_one_line(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path, small_volume: Callable[[str], Path]
) -> None:
    add_model(local_hub)
    volume = small_volume("size=64m,nr_inodes=6")  # room for bytes, not for names
    done = prefetch_cli(
        [MODEL, "--local-dir", str(volume / "enc")], cli_env(local_hub, hf_home, tmp_path)
    )
    assert done.returncode == 41, done.stderr
    errors = [line for line in done.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1, done.stderr
    assert f"the file system of {volume / 'enc'} is full" in errors[0]
    assert "Errno" not in done.stderr


# --- options -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "extra"), [(["--offline", "--force"], {}), (["--force"], {"HF_HUB_OFFLINE": "1"})]
)
def test_offline_and_force_together_are_exit_10(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path, args: list[str], extra: dict[str, str]
) -> None:
    add_model(local_hub)
    env = cli_env(local_hub, hf_home, tmp_path)
    assert prefetch_cli([MODEL], env).returncode == 0
    done = prefetch_cli([MODEL, *args], {**env, **extra})
    assert done.returncode == 10, done.stderr
    assert "force and offline contradict each other" in done.stderr


def test_the_python_api_takes_one_pattern_as_a_string(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path
) -> None:
    add_model(local_hub)
    code = (
        "import sys, entrykit\n"
        "r = entrykit.prefetch(sys.argv[1], include='config.json')\n"
        "print(r.repos[0].files)\n"
        "r = entrykit.prefetch(sys.argv[1], exclude='*.bin')\n"
        "print(r.repos[0].files)\n"
    )
    done = run_python(code, MODEL, env=cli_env(local_hub, hf_home, tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "3"]


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ({"max_workers": 0}, ValueError),
        ({"max_workers": -3}, ValueError),
        ({"max_workers": 65}, ValueError),
        ({"max_workers": True}, TypeError),
        ({"max_workers": "8"}, TypeError),
        ({"include": [1]}, TypeError),
        ({"local_dir": ""}, ValueError),
        ({"lockfile": " "}, ValueError),
        ({"cache_dir": ""}, ValueError),
    ],
)
def test_the_python_api_refuses_bad_arguments_before_any_work(
    arguments: dict[str, Any], error: type[Exception], tmp_path: Path
) -> None:
    import entrykit

    with pytest.raises(error):
        entrykit.prefetch(MODEL, **arguments)
    assert list(tmp_path.iterdir()) == []


def test_every_refused_repo_is_named_in_one_exit_42(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path
) -> None:
    add_model(local_hub)
    done = prefetch_cli(
        [MODEL, "acme/nope", "acme/missing2"], cli_env(local_hub, hf_home, tmp_path)
    )
    assert done.returncode == 42, done.stderr
    errors = [line for line in done.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1, done.stderr
    assert "2 repos refused" in errors[0]
    assert "acme/nope" in errors[0] and "acme/missing2" in errors[0]


def test_the_lock_file_records_main_for_a_spec_without_revision_and_reads_null_as_main(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path
) -> None:
    first = add_model(local_hub)
    env = cli_env(local_hub, hf_home, tmp_path)
    lock = tmp_path / "models.lock.json"
    assert prefetch_cli([MODEL, "--lock", str(lock)], env).returncode == 0
    data = json.loads(lock.read_text())
    assert data["repos"][0]["revision"] == "main"

    local_hub.commit(MODEL, {"config.json": b'{"hidden_size": 16}\n'})
    for revision in ("main", None):  # None: what earlier versions wrote
        data["repos"][0]["revision"] = revision
        lock.write_text(json.dumps(data))
        for spec in (MODEL, f"{MODEL}@main"):
            local_hub.reset_counts()
            done = prefetch_cli([spec, "--lock", str(lock)], env)
            assert done.returncode == 0, done.stderr
            assert "pinned by the lock file" in done.stderr
            assert first in done.stdout
            assert local_hub.requests == []


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["foo:x/y"], "SPEC (argument)"),
        (["acme/encoder", "--max-workers", "0"], "--max-workers (option)"),
        (["acme/encoder", "--lock", ""], "--lock (option): empty"),
        (["acme/encoder", "--local-dir", " "], "--local-dir (option): empty"),
        (["acme/encoder", "--cache-dir", ""], "--cache-dir (option): empty"),
    ],
)
def test_bad_options_are_exit_10_named_as_typed(
    tmp_path: Path, args: list[str], named: str
) -> None:
    (tmp_path / "secrets").mkdir()
    result = run_entrykit(["prefetch", *args], clean_env(tmp_path / "secrets"))
    assert result.returncode == 10, result.stderr
    assert named in result.stderr
    assert "--hf-" not in result.stderr


def test_the_local_dir_setting_is_named_as_the_user_gave_it(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path
) -> None:
    add_model(local_hub)
    local_hub.add_repo("acme/other", {"config.json": b"{}"})
    env = cli_env(local_hub, hf_home, tmp_path, ENTRYKIT_HF_LOCAL_DIR=str(tmp_path / "m"))
    two = prefetch_cli([MODEL, "acme/other"], env)
    assert two.returncode == 10, two.stderr
    assert f"ENTRYKIT_HF_LOCAL_DIR (env): {tmp_path / 'm'} takes exactly one repo, not 2" in (
        two.stderr
    )
    assert "hf_local_dir" not in two.stderr
    none = prefetch_cli(["--local-dir", str(tmp_path / "m")], cli_env(local_hub, hf_home, tmp_path))
    assert none.returncode == 10, none.stderr
    assert "--local-dir (option)" in none.stderr and "needs a repo to place" in none.stderr
    assert "None" not in none.stderr and "not 0" not in none.stderr
    assert local_hub.requests == []


def test_nested_local_dirs_are_found_without_touching_the_disk(tmp_path: Path) -> None:
    from entrykit.errors import ConfigError
    from entrykit.hub.arguments import check_local_dirs
    from entrykit.specs import ModelSpec

    outer = ModelSpec("acme/a", local_dir=tmp_path / "models")
    inner = ModelSpec("acme/b", local_dir=tmp_path / "models" / ".." / "models" / "b")
    apart = ModelSpec("acme/c", local_dir=tmp_path / "models-c")
    check_local_dirs([outer, apart])
    with pytest.raises(ConfigError, match="share a folder"):
        check_local_dirs([outer, apart, inner])
    assert list(tmp_path.iterdir()) == []


def test_a_tilde_in_local_dir_and_cache_dir_is_the_home_folder(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path
) -> None:
    add_model(local_hub)
    home = tmp_path / "home"
    home.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    env = {**cli_env(local_hub, hf_home, tmp_path), "HOME": str(home)}
    done = run_entrykit(["prefetch", MODEL, "--local-dir", "~/enc"], env, cwd=work)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(home / "enc")
    assert (home / "enc" / "tokenizer" / "vocab.txt").is_file()
    assert list(work.iterdir()) == []

    from entrykit import prefetch

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(home))
        patch.setenv("HF_ENDPOINT", local_hub.url)
        patch.chdir(work)
        report = prefetch(MODEL, cache_dir="~/cache", local_dir="~/enc2")
    assert report.repos[0].snapshot.is_relative_to(home / "cache")
    assert (home / "enc2" / "config.json").is_file()
    assert list(work.iterdir()) == []


def test_counts_of_one_are_singular(local_hub: LocalHub, hf_home: Path, tmp_path: Path) -> None:
    local_hub.add_repo("acme/one", {"config.json": b"{}"})
    env = cli_env(local_hub, hf_home, tmp_path)
    lock = tmp_path / "one.lock.json"
    done = prefetch_cli(["acme/one", "--lock", str(lock), "--local-dir", str(tmp_path / "o")], env)
    assert done.returncode == 0, done.stderr
    for text in ("1 file,", "(1 repo)", "prefetch done: 1 repo,", "1 file placed in"):
        assert text in done.stderr, text
    assert "1 files" not in done.stderr and "1 repos" not in done.stderr


def test_offline_names_the_revisions_the_cache_holds(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path
) -> None:
    add_model(local_hub)
    v2 = local_hub.commit(MODEL, {"config.json": b'{"v": 2}\n'}, branch="v2")
    env = cli_env(local_hub, hf_home, tmp_path)
    assert prefetch_cli([f"{MODEL}@v2"], env).returncode == 0
    local_hub.reset_counts()

    done = prefetch_cli([MODEL, "--offline"], env)

    assert done.returncode == 40, done.stderr
    cache = hf_home / "hub" / "models--acme--encoder"
    assert f"revision main is not in the cache ({cache}), " in done.stderr
    assert f"which holds only v2 ({v2[:12]}), and offline" in done.stderr
    other = "0" * 40
    by_commit = prefetch_cli([f"{MODEL}@{other}", "--offline"], env)
    assert by_commit.returncode == 40, by_commit.stderr
    assert f"commit {other} is not in the cache" in by_commit.stderr
    assert f"which holds only v2 ({v2[:12]})" in by_commit.stderr
    assert local_hub.requests == []
