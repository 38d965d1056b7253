"""No secret value in any output: every subcommand, success and failure, text and JSON."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from entrykit_process import clean_env, run_entrykit

API_KEY = "SuperSecretApiKey123"
HUB_TOKEN = "hf_LeakCanary987654321"
DB_PASSWORD = "Pg-Pass%word@1/:"  # percent-encoded in the URL below
DB_PASSWORD_IN_URL = "Pg-Pass%25word%401%2F%3A"
URL_ONLY_PASSWORD = "UrlOnlyPassw0rd"
LEAKS = (API_KEY, HUB_TOKEN, DB_PASSWORD, DB_PASSWORD_IN_URL, URL_ONLY_PASSWORD, "Pg-Pass")


@pytest.fixture(scope="module")
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def open_port() -> Iterator[int]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield int(listener.getsockname()[1])


@pytest.fixture(params=["text", "json"])
def env(request: pytest.FixtureRequest, tmp_path: Path, closed_port: int) -> dict[str, str]:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "api_key").write_text(API_KEY + "\n")
    (secrets / "huggingface_token").write_text(HUB_TOKEN)
    (secrets / "db_password").write_text(DB_PASSWORD)
    return clean_env(
        secrets,
        ENTRYKIT_SECRETS="API_KEY,DB_PASSWORD",
        ENTRYKIT_LOG_LEVEL="debug",
        ENTRYKIT_LOG_FORMAT=str(request.param),
        DATABASE_URL=f"postgresql://app:{DB_PASSWORD_IN_URL}@127.0.0.1:{closed_port}/app",
        ENTRYKIT_MIGRATE_URL=f"postgresql://admin:{URL_ONLY_PASSWORD}@127.0.0.1:{closed_port}/app",
        ENTRYKIT_WAIT_TIMEOUT="1",
        HF_ENDPOINT=f"http://127.0.0.1:{closed_port}",
        HF_HOME=str(tmp_path / "hf"),
    )


def _cases(closed_port: int, open_port: int) -> list[tuple[list[str], dict[str, str], set[int]]]:
    no_wait = {"ENTRYKIT_WAIT": "0"}
    return [
        (["true"], no_wait, {0}),
        (["run"], no_wait, {0}),
        (["sh", "-c", "exit 3"], no_wait, {3}),
        (["true"], {}, {20}),
        (["run", "--", "no-such-command"], no_wait, {127}),
        (["wait"], {}, {20}),
        (["wait", "--tcp", f"127.0.0.1:{open_port}"], {}, {0}),
        (
            [
                "wait",
                "--db",
                f"postgres://x:{URL_ONLY_PASSWORD}@127.0.0.1:{closed_port}/d",
                "--timeout",
                "0.5",
            ],
            {},
            {20},
        ),
        (["migrate"], {}, {10, 20}),
        (["migrate", "--check"], {}, {10, 20}),
        (["prefetch", "not a spec"], {}, {10}),
        (["prefetch", "--verify", "org/model"], {}, {40}),
        (["secrets"], {}, {0}),
        (["secrets"], {"ENTRYKIT_SECRETS": "MISSING_ONE"}, {11}),
        (["healthcheck", f"http://user:{URL_ONLY_PASSWORD}@127.0.0.1:{closed_port}/"], {}, {1}),
        (
            [
                "healthcheck",
                f"http://user:{URL_ONLY_PASSWORD}@127.0.0.1:{open_port}/",
                "--timeout",
                "0.3",
            ],
            {},
            {1},
        ),
        (["plan"], {}, {0}),
        (["plan", "--format", "json", "--", "uvicorn", f"--token={API_KEY}"], {}, {0}),
        (["plan"], {"ENTRYKIT_WAIT_TIMEOUT": f"{API_KEY}"}, {10}),
    ]


@pytest.mark.slow
def test_no_secret_in_any_output(env: dict[str, str], closed_port: int, open_port: int) -> None:
    for args, extra, codes in _cases(closed_port, open_port):
        result = run_entrykit(args, {**env, **extra})
        assert result.returncode in codes, (args, result.returncode, result.stderr[-2000:])
        output = result.stdout + result.stderr
        for secret in LEAKS:
            assert secret not in output, (args, secret, output[-3000:])
