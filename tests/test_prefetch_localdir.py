"""``--local-dir`` on the edges: a run stopped mid-copy, temporaries left by one, --verify of
the local dir's own files. Real processes, signals and files; a second file system
(``/dev/shm``) where the local dir's files are copies, not hard links."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from entrykit_process import ENTRYKIT
from hub_fixtures import LocalHub
from prefetch_helpers import MODEL, add_model, cli_env, prefetch_cli

BIG = 200_000_000  # a copy long enough to be caught in the middle


@pytest.fixture
def other_file_system(tmp_path: Path) -> Iterator[Path]:
    """A folder on another file system than ``tmp_path`` (the cache)."""
    if not Path("/dev/shm").is_dir():
        pytest.skip("no /dev/shm here")
    folder = Path(tempfile.mkdtemp(prefix="entrykit-ld-", dir="/dev/shm"))
    try:
        if os.stat(folder).st_dev == os.stat(tmp_path).st_dev:
            pytest.skip("/dev/shm is on the file system of the tests' temporary folder")
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.tmp"))


def _copying_into(pid: int, folder: Path) -> bool:
    """The process holds a file in ``folder`` open, part of the large file written: the
    copy of the weights is under way (named or not, its size tells it from the others)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            size = os.stat(f"/proc/{pid}/fd/{fd}").st_size
        except OSError:
            continue
        if target.startswith(f"{folder}/") and 1_000_000 < size < BIG:
            return True
    return False


def test_sigterm_mid_copy_into_a_local_dir_leaves_no_temporary(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path, other_file_system: Path
) -> None:
    add_model(local_hub, big=BIG)
    env = cli_env(local_hub, hf_home, tmp_path)
    assert prefetch_cli([MODEL], env).returncode == 0  # the cache is warm: only the copy left
    local_dir = other_file_system / "enc"
    process = subprocess.Popen(
        [*ENTRYKIT, "prefetch", MODEL, "--local-dir", str(local_dir)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not _copying_into(process.pid, local_dir):
            assert process.poll() is None, "the copy ended before it could be stopped"
            assert time.monotonic() < deadline, "no copy seen"
        process.send_signal(signal.SIGSTOP)  # frozen mid-copy
        assert _copying_into(process.pid, local_dir)
        process.send_signal(signal.SIGTERM)
        process.send_signal(signal.SIGCONT)
        _, stderr = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 143, stderr
    assert temporaries(local_dir) == []

    again = prefetch_cli([MODEL, "--local-dir", str(local_dir)], env)
    assert again.returncode == 0, again.stderr
    assert (local_dir / "model.safetensors").stat().st_size == BIG
    assert temporaries(local_dir) == []


def test_temporaries_a_stopped_run_left_are_swept_by_the_next(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path
) -> None:
    add_model(local_hub)
    local_dir = tmp_path / "ld"
    (local_dir / "tokenizer").mkdir(parents=True)
    download = local_dir / ".cache" / "huggingface" / "download"
    download.mkdir(parents=True)
    left = [
        local_dir / ".model.safetensors.deadbeef.tmp",
        local_dir / "tokenizer" / ".vocab.txt.0123abcd.tmp",
        download / ".config.json.metadata.5a5a5a5a.tmp",
    ]
    for path in left:
        path.write_bytes(b"x" * 1000)
    mine = local_dir / "notes.tmp"  # not a name of ours: kept
    mine.write_text("mine")

    done = prefetch_cli(
        [MODEL, "--local-dir", str(local_dir)], cli_env(local_hub, hf_home, tmp_path)
    )

    assert done.returncode == 0, done.stderr
    assert not any(path.exists() for path in left)
    assert mine.read_text() == "mine"
    assert "removed 3 temporary files" in done.stderr


def _image_of_the_local_dir_only(
    hub: LocalHub, home: Path, tmp_path: Path, *, lock: bool
) -> tuple[Path, dict[str, str], list[str]]:
    """The documented Dockerfile pattern: prefetch into a local dir in a build stage, then
    copy only that folder into the final image (here: the cache is removed)."""
    add_model(hub)
    env = cli_env(hub, home, tmp_path)
    local_dir = tmp_path / "models" / "enc"
    args = [MODEL, "--local-dir", str(local_dir)]
    if lock:
        args += ["--lock", str(tmp_path / "models.lock.json")]
    assert prefetch_cli(args, env).returncode == 0
    shutil.rmtree(home / "hub")
    return local_dir, env, [*args, "--verify"]


@pytest.mark.parametrize("lock", [True, False], ids=["with a lock file", "without"])
def test_verify_checks_the_local_dir_without_the_cache(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path, lock: bool
) -> None:
    local_dir, env, verify = _image_of_the_local_dir_only(local_hub, hf_home, tmp_path, lock=lock)

    local_hub.reset_counts()
    good = prefetch_cli(verify, env)
    assert good.returncode == 0, good.stderr
    assert f"4 files, 4.5 MB verified in {local_dir}" in good.stderr
    assert local_hub.requests == []  # offline: the local dir alone

    (local_dir / "config.json").unlink()
    weights = local_dir / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[1000] ^= 0xFF  # one bit flipped, same size
    weights.write_bytes(bytes(data))
    vocab = local_dir / "tokenizer" / "vocab.txt"
    vocab.write_bytes(vocab.read_bytes()[:-1] + b"X")  # a git file: its sha1 is checked

    bad = prefetch_cli(verify, env)

    assert bad.returncode == 40, bad.stderr
    assert f"3 of 4 files bad in {local_dir}" in bad.stderr
    assert "config.json: missing" in bad.stderr
    assert "model.safetensors: sha256 differs" in bad.stderr
    assert "tokenizer/vocab.txt: git sha1 differs" in bad.stderr
    assert local_hub.requests == []


def test_verify_of_a_local_dir_never_filled_is_exit_40(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path
) -> None:
    add_model(local_hub)
    done = prefetch_cli(
        [MODEL, "--local-dir", str(tmp_path / "empty"), "--verify"],
        cli_env(local_hub, hf_home, tmp_path),
    )
    assert done.returncode == 40, done.stderr
    assert "nothing to verify" in done.stderr


HF = Path(sys.executable).parent / "hf"


def test_a_symlink_left_in_a_local_dir_is_replaced_by_the_file(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path
) -> None:
    """hf's metadata says the file is up to date, but a link (to anything) is no file of the
    local dir: it is replaced, and --verify agrees afterwards."""
    add_model(local_hub)
    local_dir = tmp_path / "models" / "enc"
    hf = subprocess.run(
        [str(HF), "download", MODEL, "--local-dir", str(local_dir)],
        env=local_hub.env(tmp_path / "hf-download-home"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert hf.returncode == 0, hf.stderr
    vocab = local_dir / "tokenizer" / "vocab.txt"
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_bytes(b"x" * vocab.stat().st_size)  # the right size, the wrong bytes
    vocab.unlink()
    vocab.symlink_to(elsewhere)

    done = prefetch_cli(
        [MODEL, "--local-dir", str(local_dir)], cli_env(local_hub, hf_home, tmp_path)
    )

    assert done.returncode == 0, done.stderr
    assert not vocab.is_symlink()
    assert vocab.read_bytes() == local_hub.files(MODEL)["tokenizer/vocab.txt"].data
    assert elsewhere.read_bytes() == b"x" * len(elsewhere.read_bytes())  # never written through
    verify = prefetch_cli(
        [MODEL, "--verify", "--local-dir", str(local_dir)], cli_env(local_hub, hf_home, tmp_path)
    )
    assert verify.returncode == 0, verify.stderr


def test_a_local_dir_filled_by_hf_download_is_taken_into_the_cache_not_downloaded_again(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path
) -> None:
    commit = add_model(local_hub)
    local_dir = tmp_path / "models" / "enc"
    hf = subprocess.run(
        [str(HF), "download", MODEL, "--local-dir", str(local_dir)],
        env=local_hub.env(tmp_path / "hf-download-home"),  # its own cache: ours stays empty
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert hf.returncode == 0, hf.stderr
    weights = local_dir / "model.safetensors"
    vocab = local_dir / "tokenizer" / "vocab.txt"
    edited = bytearray(vocab.read_bytes())
    edited[10] ^= 0x01  # edited after hf download: same size, metadata says up to date
    vocab.write_bytes(bytes(edited))
    local_hub.reset_counts()

    done = prefetch_cli(
        [MODEL, "--local-dir", str(local_dir)], cli_env(local_hub, hf_home, tmp_path)
    )

    assert done.returncode == 0, done.stderr
    assert local_hub.count("*/resolve/*", method="GET") == 1  # the edited file only
    assert local_hub.count("*/resolve/*/tokenizer/vocab.txt", method="GET") == 1
    assert local_hub.count(origin="cdn") == 0
    assert "3 files taken from" in done.stderr and "vocab.txt" in done.stderr
    files = local_hub.files(MODEL)
    blob = hf_home / "hub" / "models--acme--encoder" / "blobs" / files["model.safetensors"].etag
    assert os.path.samefile(blob, weights)  # a hard link: no second copy
    assert vocab.read_bytes() == files["tokenizer/vocab.txt"].data  # placed again, right
    snapshot_dir = hf_home / "hub" / "models--acme--encoder" / "snapshots" / commit
    for path, file in files.items():
        assert (snapshot_dir / path).read_bytes() == file.data
    verify = prefetch_cli([MODEL, "--verify"], cli_env(local_hub, hf_home, tmp_path))
    assert verify.returncode == 0, verify.stderr
