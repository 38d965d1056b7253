"""The Hub token as read from the environment: cleaned as huggingface_hub cleans it, never
shown in a log line, and a token that cannot be sent is a configuration error, not an outage."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from hub_fixtures import LocalHub
from prefetch_helpers import MODEL, add_model, cli_env, prefetch_cli, run_python

SECRET = "hf_SuperSecretTokenValue12345"


def _logs(env: dict[str, str], *args: str, fmt: str) -> tuple[int, str, str, float]:
    started = time.monotonic()
    done = prefetch_cli([*args], {**env, "ENTRYKIT_LOG_LEVEL": "debug", "ENTRYKIT_LOG_FORMAT": fmt})
    return done.returncode, done.stdout, done.stderr, time.monotonic() - started


@pytest.mark.parametrize("fmt", ["text", "json"])
@pytest.mark.parametrize("warm", [False, True])
def test_a_token_with_a_trailing_newline_is_cleaned_sent_and_never_logged(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path, fmt: str, warm: bool
) -> None:
    add_model(local_hub, private=True)
    local_hub.add_token(SECRET)
    env = cli_env(local_hub, hf_home, tmp_path)
    if warm:
        first = prefetch_cli([MODEL], {**env, "HF_TOKEN": SECRET})
        assert first.returncode == 0, first.stderr
    code, out, err, _ = _logs({**env, "HF_TOKEN": f"{SECRET}\n"}, MODEL, fmt=fmt)
    assert code == 0, err
    assert SECRET not in out + err
    assert "retry" not in err
    if fmt == "json":
        assert all(json.loads(line) for line in err.splitlines())


@pytest.mark.parametrize("variable", ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"])
@pytest.mark.parametrize("warm", [False, True])
def test_a_token_that_cannot_be_sent_is_exit_10_at_once_without_showing_it(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path, variable: str, warm: bool
) -> None:
    add_model(local_hub)
    env = cli_env(local_hub, hf_home, tmp_path)
    if warm:
        assert prefetch_cli([MODEL], env).returncode == 0
    for fmt in ("text", "json"):
        code, out, err, seconds = _logs({**env, variable: f"{SECRET}\x01tail"}, MODEL, fmt=fmt)
        assert code == 10, err
        assert seconds < 10
        assert SECRET not in out + err
        assert "control character" in err
        assert "retry" not in err


def test_a_blank_token_is_no_token_as_in_huggingface_hub(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path
) -> None:
    add_model(local_hub)
    env = cli_env(local_hub, hf_home, tmp_path, HF_TOKEN=" \n")
    code, _, err, seconds = _logs(env, MODEL, fmt="text")
    assert code == 0, err
    assert seconds < 10
    assert "retry" not in err
    # huggingface_hub itself sees no token either.
    seen = run_python("from huggingface_hub import get_token; print(get_token())", env=env)
    assert seen.stdout.strip() == "None"


def test_a_token_file_is_cleaned_like_the_library_does(
    local_hub: LocalHub, hf_home: Path, tmp_path: Path
) -> None:
    add_model(local_hub, private=True)
    local_hub.add_token(SECRET)
    (hf_home / "token").parent.mkdir(parents=True, exist_ok=True)
    (hf_home / "token").write_text(f"  {SECRET}\r\n")
    env = cli_env(local_hub, hf_home, tmp_path)
    code, out, err, _ = _logs(env, MODEL, fmt="text")
    assert code == 0, err
    assert SECRET not in out + err
