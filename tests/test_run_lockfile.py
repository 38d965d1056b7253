"""`entrykit run` and `plan` with repos to prefetch: a lock file alone is the list of repos, as
for `entrykit prefetch --lock FILE` (the image bakes the lock in; ENTRYKIT_HF_LOCKFILE)."""

from __future__ import annotations

import shutil
from pathlib import Path

from entrykit_process import clean_env, run_entrykit
from hub_fixtures import LocalHub
from prefetch_helpers import MODEL, add_model, cli_env, prefetch_cli, snapshot


def test_run_prefetches_what_the_lock_file_holds(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path
) -> None:
    commit = add_model(local_hub)
    lock = tmp_path / "models.lock.json"
    env = cli_env(local_hub, hf_home, tmp_path)
    made = prefetch_cli([MODEL, "--lock", str(lock)], env)
    assert made.returncode == 0, made.stderr
    shutil.rmtree(hf_home)  # a fresh container: the lock file, an empty cache

    run_env = {**env, "ENTRYKIT_HF_LOCKFILE": str(lock), "ENTRYKIT_HF_OFFLINE": "1"}
    result = run_entrykit(["run", "--", "sh", "-c", 'echo "offline=$HF_HUB_OFFLINE"'], run_env)
    assert result.returncode == 0, result.stderr
    assert (snapshot(hf_home, MODEL, commit) / "config.json").is_file()
    assert "offline=1" in result.stdout  # the service runs without the Hub, as with repos

    plan = run_entrykit(["plan"], run_env)
    assert plan.returncode == 0, plan.stderr
    assert "prefetch:" in plan.stdout.split("steps:")[1], plan.stdout


def test_plan_shows_the_repos_as_written(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    env = clean_env(tmp_path / "secrets", ENTRYKIT_HF_MODELS="dataset:acme/eval@v2,acme/encoder")
    plan = run_entrykit(["plan"], env)
    assert plan.returncode == 0, plan.stderr
    row = next(line for line in plan.stdout.splitlines() if line.strip().startswith("hf_models"))
    assert row.split()[1] == "dataset:acme/eval@v2,acme/encoder"
