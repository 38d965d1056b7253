"""Prefetch for serving stacks: folders on stdout, --local-dir read by the real `hf download`,
repo ids without an owner, --dry-run / --force / --max-workers / --cache-dir, rate limits,
one /resolve per file in ranges, the Xet hash kept, and a Hub outage with a warm cache."""

from __future__ import annotations

import itertools
import json
import signal
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
    prefetch_cli,
    run_python,
    settings,
    snapshot,
    snapshot_bytes,
)

from entrykit.errors import ConfigError, PrefetchFailed
from entrykit.hub.prefetch import prefetch_models
from entrykit.hub.retry import RetryPolicy

HF = Path(sys.executable).with_name("hf")
MODEL_FILES = ["config.json", "model.safetensors", "pytorch_model.bin", "tokenizer/vocab.txt"]
XET_HASH = "ab" * 32


def test_stdout_gets_each_snapshot_folder_in_order_and_logs_stay_on_stderr(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path
) -> None:
    model_sha = add_model(local_hub)
    dataset_sha = add_dataset(local_hub)
    env = cli_env(local_hub, hf_home, tmp_path)
    for _ in ("cold", "warm"):
        result = prefetch_cli([f"dataset:{DATASET}", MODEL], env)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == [
            str(snapshot(hf_home, DATASET, dataset_sha, "dataset")),
            str(snapshot(hf_home, MODEL, model_sha)),
        ]
        assert "prefetch done" in result.stderr


def test_a_repo_id_without_an_owner_is_cached_as_huggingface_hub_reads_it(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path
) -> None:
    sha = local_hub.add_repo("gpt2", {"config.json": b'{"n_layer": 2}\n', "vocab.txt": b"a\nb\n"})
    env = cli_env(local_hub, hf_home, tmp_path)
    result = prefetch_cli(["gpt2"], env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(hf_home / "hub" / "models--gpt2" / "snapshots" / sha)

    code = (
        "from huggingface_hub import hf_hub_download, snapshot_download\n"
        "print(snapshot_download('gpt2'))\n"
        "print(open(hf_hub_download('gpt2', 'config.json')).read().strip())\n"
    )
    local_hub.reset_counts()
    loaded = run_python(code, env=local_hub.env(hf_home, HF_HUB_OFFLINE="1"))
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.splitlines() == [result.stdout.strip(), '{"n_layer": 2}']
    assert local_hub.requests == []


def test_local_dir_holds_plain_files_that_hf_download_finds_up_to_date(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path
) -> None:
    sha = add_model(local_hub)
    target = tmp_path / "models" / "encoder"
    env = cli_env(local_hub, hf_home, tmp_path)

    result = prefetch_cli([MODEL, "--local-dir", str(target)], env)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(target)
    placed = {
        p.relative_to(target).as_posix() for p in target.rglob("*") if ".cache" not in p.parts
    }
    assert {p for p in placed if not (target / p).is_dir()} == set(MODEL_FILES)
    for path, data in hub_bytes(local_hub, MODEL, MODEL_FILES).items():
        assert not (target / path).is_symlink()
        assert (target / path).read_bytes() == data
    metadata = (target / ".cache/huggingface/download/model.safetensors.metadata").read_text()
    assert metadata.splitlines()[:2] == [sha, local_hub.files(MODEL)["model.safetensors"].etag]

    # The real huggingface_hub CLI: one metadata request, no file downloaded again.
    local_hub.reset_counts()
    hf = subprocess.run(
        [str(HF), "download", MODEL, "--local-dir", str(target)],
        env=local_hub.env(hf_home),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert hf.returncode == 0, hf.stderr
    assert str(target) in hf.stdout
    assert local_hub.count("*/resolve/*") == 0, local_hub.requests
    assert local_hub.count(origin="cdn") == 0


def test_local_dir_from_a_models_table_and_from_the_setting(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path
) -> None:
    add_model(local_hub)
    add_dataset(local_hub)
    (tmp_path / "entrykit.toml").write_text(
        f'[[models]]\nrepo = "{MODEL}"\nlocal_dir = "baked/encoder"\n'
        f'[[models]]\nrepo = "{DATASET}"\ntype = "dataset"\n'
    )
    env = cli_env(local_hub, hf_home, tmp_path, ENTRYKIT_CONFIG=str(tmp_path / "entrykit.toml"))
    result = prefetch_cli([], env)
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.splitlines()
    assert first == str(tmp_path / "baked" / "encoder")
    assert (Path(first) / "config.json").read_bytes() == b'{"hidden_size": 8}\n'
    assert "datasets--" in second

    two = prefetch_cli([MODEL, f"dataset:{DATASET}"], {**env, "ENTRYKIT_HF_LOCAL_DIR": "x"})
    assert two.returncode == 10, two.stderr
    assert "exactly one repo" in two.stderr


def test_dry_run_lists_what_would_be_downloaded_and_writes_nothing(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path
) -> None:
    add_model(local_hub)
    env = cli_env(local_hub, hf_home, tmp_path)
    result = prefetch_cli([MODEL, "--exclude", "*.bin", "--dry-run"], env)
    assert result.returncode == 0, result.stderr
    files = local_hub.files(MODEL)
    expected = sorted(
        f"{len(files[p].data)}\t{MODEL}\t{p}"
        for p in ("config.json", "model.safetensors", "tokenizer/vocab.txt")
    )
    assert sorted(result.stdout.splitlines()) == expected
    assert not any(hf_home.rglob("*"))
    assert local_hub.count("*/resolve/*") == 0


def test_force_downloads_again_and_max_workers_and_cache_dir_are_options(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path
) -> None:
    sha = local_hub.add_repo(MODEL, {"big.safetensors": generated_bytes(40_000_000, seed=9)})
    env = cli_env(local_hub, hf_home, tmp_path)
    cache = tmp_path / "elsewhere"
    args = [MODEL, "--cache-dir", str(cache), "--max-workers", "1"]
    first = prefetch_cli(args, env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == str(cache / "models--acme--encoder" / "snapshots" / sha)
    assert local_hub.count(origin="cdn") == 1  # one worker: no parallel ranges
    assert not (hf_home / "hub").exists()

    local_hub.reset_counts()
    assert prefetch_cli(args, env).returncode == 0
    assert local_hub.count(origin="cdn") == 0
    forced = prefetch_cli([*args, "--force"], env)
    assert forced.returncode == 0, forced.stderr
    assert local_hub.count(origin="cdn") == 1
    assert (Path(forced.stdout.strip()) / "big.safetensors").stat().st_size == 40_000_000


def test_a_file_in_parallel_ranges_costs_one_resolve_and_an_expired_target_one_more(
    local_hub: LocalHub, hf_home: Path
) -> None:
    local_hub.add_repo(MODEL, {"big.safetensors": generated_bytes(64_000_000, seed=5)})
    sha256 = local_hub.files(MODEL)["big.safetensors"].sha256
    local_hub.inject(f"/lfs/{sha256}", origin="cdn", status=403, times=1)
    prefetch_models(settings(MODEL), access=access(local_hub, hf_home), policy=FAST)
    assert local_hub.count("*/resolve/*") == 2  # the first target "expired" once
    assert local_hub.count(f"/lfs/{sha256}") >= 4  # ranges side by side

    local_hub.reset_counts()
    prefetch_models(settings(MODEL), access=access(local_hub, hf_home / "2"), policy=FAST)
    assert local_hub.count("*/resolve/*") == 1
    assert local_hub.count(f"/lfs/{sha256}") >= 4


def test_429_waits_for_the_ratelimit_reset_and_that_wait_does_not_use_up_the_give_up_time(
    local_hub: LocalHub, hf_home: Path
) -> None:
    add_model(local_hub)
    local_hub.inject(
        "/api/models/*/revision/*", status=429, headers={"RateLimit": '"api";r=0;t=1'}, times=3
    )
    impatient = RetryPolicy(connect_timeout=2, read_timeout=2, base_delay=0.05, give_up_after=0.5)
    started = time.monotonic()
    prefetch_models(settings(MODEL), access=access(local_hub, hf_home), policy=impatient)
    assert time.monotonic() - started >= 3.0  # three resets of a second each, waited out
    arrivals = [r.at for r in local_hub.requests if "/revision/" in r.path]
    assert len(arrivals) == 4
    assert all(b - a >= 0.95 for a, b in itertools.pairwise(arrivals))

    # Other failures still give up on time (an empty cache: nothing can stand in).
    local_hub.inject("/api/models/*/revision/*", status=503, times=1000)
    started = time.monotonic()
    with pytest.raises(PrefetchFailed, match="giving up"):
        prefetch_models(settings(MODEL), access=access(local_hub, hf_home / "2"), policy=impatient)
    assert time.monotonic() - started < 2


def test_sigterm_during_a_rate_limit_wait_stops_within_a_second(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path
) -> None:
    add_model(local_hub)
    local_hub.inject("/api/models/*/revision/*", status=429, retry_after=60, times=5)
    process = subprocess.Popen(
        [sys.executable, "-m", "entrykit", "prefetch", MODEL],
        env=cli_env(local_hub, hf_home, tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 20
    while local_hub.count("/api/models/*/revision/*") == 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.5)
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=10)
    assert time.monotonic() - sent < 1.0, stderr
    assert process.returncode == 128 + signal.SIGTERM, stderr


def test_the_xet_hash_is_kept_in_the_cached_listing_as_huggingface_hub_keeps_it(
    local_hub: LocalHub, hf_home: Path
) -> None:
    sha = add_model(local_hub)

    def with_xet(path: str, body: object, headers: dict[str, str]) -> tuple[object, dict[str, str]]:
        if "/tree/" in path and isinstance(body, list):
            for entry in body:
                if entry.get("path") == "model.safetensors":
                    entry["xetHash"] = XET_HASH
        return body, headers

    local_hub.tamper = with_xet
    prefetch_models(settings(MODEL), access=access(local_hub, hf_home), policy=FAST)
    tree = snapshot(hf_home, MODEL, sha).parent.parent / "trees" / f"{sha}.json"
    assert json.loads(tree.read_text())["files"]["model.safetensors"]["xet_hash"] == XET_HASH

    from huggingface_hub._tree_cache import read_tree_cache

    entries = read_tree_cache(str(tree.parent.parent), sha)
    assert entries is not None
    assert entries["model.safetensors"].xet_hash == XET_HASH


def test_a_hub_outage_with_a_complete_cache_uses_it_with_one_warning(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path
) -> None:
    sha = add_model(local_hub)
    env = cli_env(local_hub, hf_home, tmp_path)
    assert prefetch_cli([MODEL], env).returncode == 0
    with LocalHub() as gone:
        closed = gone.url  # a port nothing listens on once it stops

    for endpoint, fault in ((closed, False), (local_hub.url, True)):
        if fault:
            local_hub.inject("*", status=503, times=10_000)
        started = time.monotonic()
        result = prefetch_cli([MODEL], {**env, "HF_ENDPOINT": endpoint})
        assert result.returncode == 0, result.stderr
        assert time.monotonic() - started < 10
        assert result.stdout.strip() == str(snapshot(hf_home, MODEL, sha))
        warnings = [line for line in result.stderr.splitlines() if " WARN" in line]
        assert len(warnings) == 1, result.stderr
        assert "out of reach" in warnings[0] and sha in warnings[0]


def test_a_hub_outage_with_a_cache_that_cannot_serve_is_exit_40(
    local_hub: LocalHub, hf_home: Path
) -> None:
    sha = add_model(local_hub)
    prefetch_models(settings(MODEL), access=access(local_hub, hf_home), policy=FAST)
    weights = snapshot(hf_home, MODEL, sha) / "model.safetensors"
    weights.unlink()  # one file of the cached listing is gone
    local_hub.inject("*", status=503, times=10_000)
    quick = RetryPolicy(connect_timeout=2, read_timeout=2, base_delay=0.05, give_up_after=1)
    with pytest.raises(PrefetchFailed, match="giving up") as failure:
        prefetch_models(settings(MODEL), access=access(local_hub, hf_home), policy=quick)
    assert failure.value.exit_code == 40


def test_the_python_api_takes_local_dir_and_reports_the_folder(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path
) -> None:
    add_model(local_hub)
    target = tmp_path / "plain"
    config = settings(MODEL)._replace(hf_local_dir=target)
    report = prefetch_models(config, access=access(local_hub, hf_home), policy=FAST)
    assert report.repos[0].folder == target
    placed = {k: v for k, v in snapshot_bytes(target).items() if not k.startswith(".cache/")}
    assert placed == hub_bytes(local_hub, MODEL, MODEL_FILES)
    with pytest.raises(ConfigError):
        prefetch_models(
            settings(MODEL, "other/repo")._replace(hf_local_dir=target),
            access=access(local_hub, hf_home),
        )


def test_the_public_python_api_takes_the_new_options(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path
) -> None:
    add_model(local_hub)
    script = (
        "import entrykit\n"
        "dry = entrykit.prefetch('acme/encoder', dry_run=True, cache_dir='c')\n"
        "print(len(dry.repos[0].to_download), dry.repos[0].seconds >= 0)\n"
        "done = entrykit.prefetch('acme/encoder', local_dir='plain', cache_dir='c', max_workers=2)\n"
        "print(done.repos[0].folder)\n"
    )
    result = run_python(script, env=local_hub.env(hf_home), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["4", "True", str(tmp_path / "plain")]
    assert (tmp_path / "plain" / "config.json").read_bytes() == b'{"hidden_size": 8}\n'
    assert (tmp_path / "c" / "models--acme--encoder").is_dir()
    assert not (hf_home / "hub").exists()
