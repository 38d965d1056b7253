"""ENTRYKIT_USER / ENTRYKIT_CHOWN: the gosu-like switch before exec."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from entrykit_process import clean_env, run_entrykit

import entrykit

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the switch needs root")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return clean_env(tmp_path / "no-secrets")


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder other users can reach (pytest's own tmp folders are root-only)."""
    path = Path(tempfile.mkdtemp(prefix="entrykit-user-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def test_nobody_gets_its_uid_groups_and_home(env: dict[str, str], shared_dir: Path) -> None:
    data = shared_dir / "data"
    (data / "sub").mkdir(parents=True)
    (data / "sub" / "file").write_text("x")
    nobody = pwd.getpwnam("nobody")
    script = 'echo "$(id -u) $(id -g) $(id -G)"; echo "$HOME"; echo "$USER"; touch "$1/sub/new"'
    result = run_entrykit(
        ["sh", "-c", script, "sh", str(data)],
        {**env, "ENTRYKIT_USER": "nobody", "ENTRYKIT_CHOWN": str(data)},
    )
    assert result.returncode == 0, result.stderr
    ids, home, user = result.stdout.splitlines()
    groups = sorted({nobody.pw_gid, *os.getgrouplist("nobody", nobody.pw_gid)})
    assert ids.split() == [str(nobody.pw_uid), str(nobody.pw_gid), *map(str, groups)]
    assert home == nobody.pw_dir
    assert user == "nobody"
    for path in (data, data / "sub", data / "sub" / "file", data / "sub" / "new"):
        assert path.stat().st_uid == nobody.pw_uid


def test_numeric_uid_gid_without_passwd_entry(env: dict[str, str]) -> None:
    result = run_entrykit(
        ["sh", "-c", "id -u; id -g; id -G; echo $HOME"], {**env, "ENTRYKIT_USER": "4242:4343"}
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["4242", "4343", "4343", "/"]


def test_unknown_user_or_group_is_10_before_any_step(env: dict[str, str]) -> None:
    for spec in ("no-such-user", "nobody:no-such-group"):
        # The wait would take 30 s: the user is checked before it starts.
        slow = {"ENTRYKIT_WAIT_TCP": "127.0.0.1:1", "ENTRYKIT_WAIT_TIMEOUT": "30"}
        result = run_entrykit(["true"], {**env, "ENTRYKIT_USER": spec, **slow}, timeout=20)
        assert result.returncode == 10, spec
        assert "unknown" in result.stderr
        assert "wait     start" not in result.stderr


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare")
def test_not_root_skips_the_switch_with_one_info_line(env: dict[str, str]) -> None:
    # In a fresh user namespace without a mapping we are uid 65534, as under runAsNonRoot,
    # while the host still lets us read the interpreter under /root.
    result = run_entrykit(
        ["id", "-u"], {**env, "ENTRYKIT_USER": "root"}, prefix=["unshare", "--user"]
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "65534"
    assert "ENTRYKIT_USER=root ignored: not running as root" in result.stderr


AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv")
def test_an_unreadable_secret_says_mode_owner_and_who_we_are(shared_dir: Path) -> None:
    """The natural chmod 600 of a root-owned password file, read by the app's user."""
    folder = shared_dir / "secrets"
    folder.mkdir()
    folder.chmod(0o755)
    (folder / "db_password").write_text("private-password\n")
    (folder / "db_password").chmod(0o600)
    nobody = pwd.getpwnam("nobody").pw_uid
    # The checkout may sit in a folder only root can reach (CI's clone): nobody imports a copy.
    shutil.copytree(Path(entrykit.__file__).parent, shared_dir / "src" / "entrykit")
    env = clean_env(folder, ENTRYKIT_SECRETS="DB_PASSWORD", PYTHONPATH=str(shared_dir / "src"))
    result = run_entrykit(["true"], env, prefix=AS_NOBODY, cwd=shared_dir)
    assert result.returncode == 11, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert f"permission denied reading {folder / 'db_password'}" in line
    assert "mode 0600, owner uid 0 (root)" in line
    assert f"entrykit runs as uid {nobody} (nobody)" in line
    assert f"mode 0644, or owned by uid {nobody}" in line
    assert "private-password" not in result.stderr
    # The fix the message gives works.
    (folder / "db_password").chmod(0o644)
    result = run_entrykit(
        ["sh", "-c", 'echo "$DB_PASSWORD"'], env, prefix=AS_NOBODY, cwd=shared_dir
    )
    assert result.stdout == "private-password\n", result.stderr


def test_chown_refuses_a_link_given_as_the_folder(env: dict[str, str], shared_dir: Path) -> None:
    """As root, following it would hand the link's target (here a stand-in for /etc)."""
    target = shared_dir / "etc"
    target.mkdir()
    (target / "shadow").write_text("root-only")
    link = shared_dir / "data"
    link.symlink_to(target)
    result = run_entrykit(["true"], {**env, "ENTRYKIT_USER": "nobody", "ENTRYKIT_CHOWN": str(link)})
    assert result.returncode == 10, result.stderr
    assert f"ENTRYKIT_CHOWN: {link} is a symbolic link" in result.stderr
    for path in (target, target / "shadow"):
        assert path.stat().st_uid == 0


def test_chown_does_not_follow_links_inside_the_folder(
    env: dict[str, str], shared_dir: Path
) -> None:
    outside = shared_dir / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "file").write_text("x")
    data = shared_dir / "data"
    data.mkdir()
    (data / "to_dir").symlink_to(outside)
    (data / "to_file").symlink_to(outside / "file")
    (data / "own").write_text("mine")
    nobody = pwd.getpwnam("nobody").pw_uid
    result = run_entrykit(["true"], {**env, "ENTRYKIT_USER": "nobody", "ENTRYKIT_CHOWN": str(data)})
    assert result.returncode == 0, result.stderr
    for path in (data, data / "own"):
        assert path.stat().st_uid == nobody
    for link in (data / "to_dir", data / "to_file"):
        assert link.lstat().st_uid == nobody  # the link itself, as chown -h does
    for path in (outside, outside / "sub", outside / "file"):
        assert path.stat().st_uid == 0


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv")
def test_a_working_directory_the_user_cannot_search_is_exit_10(shared_dir: Path) -> None:
    private = shared_dir / "private"
    private.mkdir(mode=0o700)
    shutil.copytree(Path(entrykit.__file__).parent, shared_dir / "src" / "entrykit")
    env = clean_env(shared_dir / "no-secrets", PYTHONPATH=str(shared_dir / "src"))
    result = run_entrykit(["true"], env, prefix=AS_NOBODY, cwd=private)
    assert result.returncode == 10, result.stderr
    assert f"cannot look for the config file {private / 'entrykit.toml'}" in result.stderr
    assert "Traceback" not in result.stderr
