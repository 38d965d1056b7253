"""A password in a URL setting is a secret from the moment the setting is read, whatever shape
the URL has: mistyped (no "://"), or one of a comma-separated list, where only the passwords
are hidden, not the ports, users and path words of the other URLs."""

from __future__ import annotations

from pathlib import Path

import pytest
from entrykit_process import clean_env, run_entrykit

PASSWORD = "S3cretPw99"


@pytest.mark.parametrize(
    "url",
    [
        f"redis:/:{PASSWORD}@redis:6379/0",
        f"redis//:{PASSWORD}@redis:6379/0",
        f"redis:{PASSWORD}@redis",
        f":{PASSWORD}@h:6379",
        f"//app:{PASSWORD}@db/app",
        f"http:/user:{PASSWORD}@h/",
    ],
)
def test_a_mistyped_url_is_exit_10_without_its_password(tmp_path: Path, url: str) -> None:
    env = clean_env(tmp_path, ENTRYKIT_LOG_LEVEL="debug")
    waited = run_entrykit(["wait", url, "--timeout", "1"], env)
    assert waited.returncode == 10, waited.stderr
    assert PASSWORD not in waited.stderr + waited.stdout
    for variable in ("ENTRYKIT_WAIT_FOR", "ENTRYKIT_WAIT_HTTP"):
        plan = run_entrykit(["plan"], {**env, variable: url})
        assert PASSWORD not in plan.stderr + plan.stdout


def test_a_list_of_urls_hides_only_the_passwords(tmp_path: Path) -> None:
    env = clean_env(
        tmp_path,
        ENTRYKIT_WAIT_FOR=(
            f"http://127.0.0.1:41010/ready/env.sh,redis://noselect:{PASSWORD}@127.0.0.1:1/0,"
            f"amqp://celery:a,b{PASSWORD}@rabbit/app"
        ),
        ENTRYKIT_PRESTART="echo serving on port 41010 as user noselect, ready",
    )
    plan = run_entrykit(["plan"], env)
    assert plan.returncode == 0, plan.stderr
    assert PASSWORD not in plan.stdout and f"b{PASSWORD}" not in plan.stdout
    assert "http://127.0.0.1:41010/ready/env.sh" in plan.stdout
    assert "redis://noselect:***@127.0.0.1:1/0" in plan.stdout
    assert "amqp://celery:***@rabbit/app" in plan.stdout  # a comma in the password too
    assert "echo serving on port 41010 as user noselect, ready" in plan.stdout
