"""Prefetch against the local Hub with the real huggingface_hub client reading the result.

Library calls where the behaviour is decided in-process; ``python -m entrykit prefetch`` as a
real process for exit codes, output and everything that spans processes.
"""

from __future__ import annotations

import logging
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hub_fixtures import LocalHub, generated_bytes
from prefetch_helpers import (
    DATASET,
    FAST,
    MODEL,
    access,
    add_dataset,
    add_model,
    cli_env,
    hub_bytes,
    leftovers,
    prefetch_cli,
    run_python,
    settings,
    snapshot,
    snapshot_bytes,
)

from entrykit.errors import PrefetchFailed, RepoRefused
from entrykit.hub.prefetch import prefetch_models
from entrykit.hub.retry import RetryPolicy

MODEL_FILES = ["config.json", "model.safetensors", "tokenizer/vocab.txt"]
DATASET_FILES = ["data/test-00000.parquet", "data/train-00000.parquet"]


def test_cold_fetch_of_a_model_and_a_dataset_with_patterns(
    local_hub: LocalHub, hf_home: Path
) -> None:
    model_sha = add_model(local_hub)
    dataset_sha = add_dataset(local_hub)
    config = settings(MODEL, f"dataset:{DATASET}@main", exclude=["*.bin"])
    # Per-repo patterns (from [[models]] tables): the dataset only wants data/.
    model_spec, dataset_spec = config.hf_models
    config = config._replace(hf_models=(model_spec, dataset_spec._replace(include=("data/",))))

    report = prefetch_models(config, access=access(local_hub, hf_home), policy=FAST)

    model_dir = snapshot(hf_home, MODEL, model_sha)
    dataset_dir = snapshot(hf_home, DATASET, dataset_sha, "dataset")
    assert snapshot_bytes(model_dir) == hub_bytes(local_hub, MODEL, MODEL_FILES)
    assert snapshot_bytes(dataset_dir) == hub_bytes(
        local_hub, DATASET, DATASET_FILES, repo_type="dataset"
    )
    assert (model_dir.parent.parent / "refs" / "main").read_text() == model_sha
    assert (dataset_dir.parent.parent / "refs" / "main").read_text() == dataset_sha
    # The cache layout: relative links into blobs named after the etag (sha256 for LFS).
    weights = model_dir / "model.safetensors"
    assert weights.is_symlink()
    assert Path(weights.readlink()).parts[:3] == ("..", "..", "blobs")
    assert weights.resolve().name == local_hub.files(MODEL)["model.safetensors"].sha256
    assert [(r.repo_id, r.commit, r.files, r.source) for r in report.repos] == [
        (MODEL, model_sha, 3, "network"),
        (DATASET, dataset_sha, 2, "network"),
    ]
    assert report.repos[0].bytes == sum(
        len(b) for b in hub_bytes(local_hub, MODEL, MODEL_FILES).values()
    )
    # Excluded files were never asked for.
    assert local_hub.count("*pytorch_model.bin") == 0
    assert local_hub.count("*extra/notes.txt") == 0
    assert local_hub.count("*README.md") == 0
    assert leftovers(hf_home) == []


LOAD_BACK = """
import sys
from huggingface_hub import hf_hub_download, snapshot_download, try_to_load_from_cache
model, dataset, model_sha = sys.argv[1:4]
path = snapshot_download(model, local_files_only=True, ignore_patterns=["*.bin"])
assert path.endswith(model_sha), path
print(open(hf_hub_download(model, "config.json"), "rb").read().decode().strip())
print(snapshot_download(dataset, repo_type="dataset", allow_patterns=["data/*"]))
print(hf_hub_download(dataset, "data/test-00000.parquet", repo_type="dataset"))
print(try_to_load_from_cache(model, "model.safetensors"))
"""


def test_the_cache_is_read_back_offline_by_huggingface_hub(
    local_hub: LocalHub, hf_home: Path
) -> None:
    model_sha = add_model(local_hub)
    dataset_sha = add_dataset(local_hub)
    prefetch_models(
        settings(MODEL, f"dataset:{DATASET}", exclude=["*.bin", "extra/", "README.md"]),
        access=access(local_hub, hf_home),
        policy=FAST,
    )
    local_hub.reset_counts()

    env = local_hub.env(hf_home, HF_HUB_OFFLINE="1")
    result = run_python(LOAD_BACK, MODEL, DATASET, model_sha, env=env)

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == '{"hidden_size": 8}'
    assert lines[1].endswith(dataset_sha)
    assert (
        Path(lines[2]).read_bytes()
        == local_hub.files(DATASET, repo_type="dataset")["data/test-00000.parquet"].data
    )
    assert Path(lines[3]).read_bytes() == local_hub.files(MODEL)["model.safetensors"].data
    assert local_hub.requests == []


@pytest.mark.parametrize(
    ("spec", "setup", "token", "status", "advice"),
    [
        ("acme/nothing-here", "none", None, 404, "repo not found"),
        (f"{MODEL}@no-such-branch", "public", None, 404, "revision not found"),
        (MODEL, "private", None, 401, "huggingface_token"),
        (MODEL, "private", "hf_wrongtoken00", 401, "a token was sent"),
        (MODEL, "gated", None, 401, "gated repo"),
        (MODEL, "gated", "hf_noaccesstoken", 403, "accept its conditions"),
    ],
)
def test_a_missing_private_or_gated_repo_is_exit_42_at_once(
    local_hub: LocalHub,
    hf_home: Path,
    tmp_path: Path,
    spec: str,
    setup: str,
    token: str | None,
    status: int,
    advice: str,
) -> None:
    if setup != "none":
        add_model(local_hub, private=setup == "private", gated=setup == "gated")
    local_hub.add_token("hf_noaccesstoken", repos=set())
    extra = {"HF_TOKEN": token} if token else {}
    env = cli_env(local_hub, hf_home, tmp_path, **extra)

    started = time.monotonic()
    result = prefetch_cli([spec], env)

    assert result.returncode == 42, result.stderr
    assert time.monotonic() - started < 10
    assert advice in result.stderr
    assert f"HTTP {status}" in result.stderr
    # Refusals are not retried.
    assert local_hub.count("/api/*") == 1
    assert not (hf_home / "hub" / "models--acme--encoder" / "blobs").exists()


def test_the_token_is_sent_to_the_hub_only_and_never_printed(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path
) -> None:
    token = "hf_SecretToken_5f3a9c"
    add_model(local_hub, private=True)
    local_hub.add_token(token)
    env = cli_env(local_hub, hf_home, tmp_path, HF_TOKEN=token, ENTRYKIT_LOG_LEVEL="debug")

    result = prefetch_cli([MODEL], env)

    assert result.returncode == 0, result.stderr
    hub_requests = [r for r in local_hub.requests if r.origin == "hub"]
    assert hub_requests
    assert all(r.headers.get("authorization") == f"Bearer {token}" for r in hub_requests)
    # Signed LFS URLs on another origin must not receive the token.
    cdn_requests = [r for r in local_hub.requests if r.origin == "cdn"]
    assert cdn_requests
    assert all("authorization" not in r.headers for r in cdn_requests)
    assert token not in result.stdout + result.stderr


def test_the_token_can_come_from_the_huggingface_token_secret(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path
) -> None:
    token = "hf_FromSecretFile_77"
    add_model(local_hub, gated=True)
    local_hub.add_token(token)
    env = cli_env(local_hub, hf_home, tmp_path)
    (tmp_path / "secrets" / "huggingface_token").write_text(token + "\n")

    result = prefetch_cli([MODEL, "--include", "*.json"], env)

    assert result.returncode == 0, result.stderr
    assert local_hub.requests[0].headers.get("authorization") == f"Bearer {token}"
    assert token not in result.stderr


def test_progress_lines_without_a_terminal(
    local_hub: LocalHub, hf_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    add_model(local_hub, big=2_000_000)
    local_hub.bandwidth = 1_500_000
    caplog.set_level(logging.INFO, logger="entrykit.prefetch")

    prefetch_models(
        settings(MODEL, exclude=["*.bin"]),
        access=access(local_hub, hf_home),
        policy=FAST,
        progress_interval=0.25,
    )

    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("downloaded ")]
    assert len(progress) >= 3, progress
    assert all(" of 2.0 MB (" in line and "/s" in line for line in progress)
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"{MODEL}: commit ") and "to download" in m for m in messages)
    assert any(m.startswith(f"{MODEL}: commit ") and "from the network" in m for m in messages)


def test_cli_output_without_a_terminal_has_no_bars_and_no_telemetry(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path
) -> None:
    add_model(local_hub)
    env = cli_env(local_hub, hf_home, tmp_path)
    env.pop("HF_HUB_DISABLE_TELEMETRY")
    env.pop("HF_HUB_CACHE")  # HF_HOME alone: the cache is HF_HOME/hub

    result = prefetch_cli([MODEL], env)

    assert result.returncode == 0, result.stderr
    assert (hf_home / "hub" / "models--acme--encoder" / "refs" / "main").exists()
    assert "\r" not in result.stderr
    assert "it/s" not in result.stderr and "%|" not in result.stderr
    lines = result.stderr.splitlines()
    assert any(f"{MODEL}: commit" in line and "from the network" in line for line in lines)
    assert local_hub.count("/api/agent-harnesses") == 0
    assert {r.path.split("/")[1] for r in local_hub.requests} <= {"api", "acme", "lfs"}


def test_the_python_api_for_build_scripts(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path
) -> None:
    sha = add_model(local_hub)
    script = (
        "import entrykit\n"
        "for _ in range(2):  # still the function after the step's modules were imported\n"
        "    report = entrykit.prefetch('acme/encoder', include=['*.json', 'tokenizer/'], lockfile='m.lock')\n"
        "    print(report.repos[0].commit, report.repos[0].files, report.repos[0].source)\n"
        "print(type(report) is entrykit.PrefetchReport)\n"
    )
    result = run_python(script, env=local_hub.env(hf_home), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [sha, "2", "network", sha, "2", "cache", "True"]
    assert (tmp_path / "m.lock").exists()


def test_a_spec_error_in_the_python_api_is_a_config_error() -> None:
    from entrykit.errors import ConfigError
    from entrykit.hub.prefetch import prefetch

    with pytest.raises(ConfigError):
        prefetch("not a spec")


def test_the_retry_schedule_backs_off_with_jitter_and_honours_retry_after() -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=8, give_up_after=60)
    rng = random.Random(7)
    delays = [policy.delay(attempt, None, rng) for attempt in range(1, 8)]
    caps = [0.5, 1, 2, 4, 8, 8, 8]
    assert all(cap / 2 <= d <= cap for d, cap in zip(delays, caps, strict=True)), delays
    assert len({round(d, 6) for d in delays}) == len(delays)  # jittered, not a fixed ladder
    assert policy.delay(1, 5.0, rng) == 5.0
    assert policy.delay(1, 3600.0, rng) == 600  # a Hub window is 5 minutes: never more than 10


def test_a_stalled_hub_fails_instead_of_hanging(local_hub: LocalHub, hf_home: Path) -> None:
    add_model(local_hub)
    local_hub.inject("/api/*", stall=30, times=100)
    policy = RetryPolicy(
        connect_timeout=1, read_timeout=0.3, base_delay=0.05, max_delay=0.2, give_up_after=1.5
    )
    started = time.monotonic()
    with pytest.raises(PrefetchFailed, match="giving up"):
        prefetch_models(settings(MODEL), access=access(local_hub, hf_home), policy=policy)
    assert time.monotonic() - started < 6


def test_the_deadline_and_cancel_stop_a_run(local_hub: LocalHub, hf_home: Path) -> None:
    import threading

    add_model(local_hub, big=4_000_000)
    local_hub.bandwidth = 500_000
    started = time.monotonic()
    with pytest.raises(PrefetchFailed, match="deadline"):
        prefetch_models(
            settings(MODEL), access=access(local_hub, hf_home), policy=FAST, deadline=1.0
        )
    assert time.monotonic() - started < 4

    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(PrefetchFailed, match="stopped"):
        prefetch_models(
            settings(MODEL), access=access(local_hub, hf_home), policy=FAST, cancel=cancel
        )
    assert time.monotonic() - started < 3


def test_a_refused_repo_among_others_fails_the_run_with_42(
    local_hub: LocalHub, hf_home: Path
) -> None:
    add_model(local_hub)
    local_hub.add_repo("acme/big", {"w.bin": generated_bytes(2_000_000, 9)})
    with pytest.raises(RepoRefused, match="acme/missing"):
        prefetch_models(
            settings(MODEL, "acme/missing", "acme/big"),
            access=access(local_hub, hf_home),
            policy=FAST,
        )


RUN_COMMAND = """
import os
from huggingface_hub import hf_hub_download
print(os.environ.get("HF_HUB_OFFLINE"))
print(open(hf_hub_download("acme/encoder", "config.json"), "rb").read().decode().strip())
"""


@pytest.mark.slow
def test_run_prefetches_then_the_command_loads_offline(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path
) -> None:
    from entrykit_process import run_entrykit

    add_model(local_hub)
    env = cli_env(
        local_hub,
        hf_home,
        tmp_path,
        ENTRYKIT_HF_MODELS=MODEL,
        ENTRYKIT_HF_EXCLUDE="*.bin",
        ENTRYKIT_HF_OFFLINE="1",
    )

    result = run_entrykit(["run", "--", sys.executable, "-c", RUN_COMMAND], env)

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["1", '{"hidden_size": 8}']
    assert local_hub.count(method="HEAD") == 0  # the command asked the Hub nothing
    assert local_hub.count("*pytorch_model.bin") == 0


def test_a_terminal_gets_a_progress_bar(local_hub: LocalHub, hf_home: Path, tmp_path: Path) -> None:
    import fcntl
    import os
    import pty
    import struct
    import termios

    add_model(local_hub, big=2_000_000)
    local_hub.bandwidth = 2_000_000
    env = cli_env(local_hub, hf_home, tmp_path)
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "entrykit", "prefetch", MODEL],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=follower,
        )
        os.close(follower)
        output = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the other side is closed
                break
            if not chunk:
                break
            output += chunk
        assert process.wait(timeout=60) == 0
    finally:
        os.close(leader)
    text = output.decode(errors="replace")
    assert "prefetch:" in text and "B/s" in text and "\r" in text, text
    assert "INFO  prefetch downloaded " not in text  # bars replace the progress lines
