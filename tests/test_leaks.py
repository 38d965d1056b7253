"""No secret value in any output: every subcommand, success and failure, text and JSON."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote, quote_plus

import psycopg.sql as sql
import pytest
from entrykit_process import clean_env, run_entrykit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from postgres_fixtures import PostgresServer

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


# --- property-based: a URL password, in any form, through real error paths ---------------

ENV_PY = """\
from alembic import context

config = context.config
connection = config.attributes["connection"]
context.configure(connection=connection)
with context.begin_transaction():
    context.run_migrations()
"""

# The migration fails with the password in its message: decoded, in SQLAlchemy's own URL
# rendering, and as the environment holds it.
FAILING_REVISION = """\
import os

from alembic import op

revision = "a1"
down_revision = None


def upgrade():
    url = op.get_bind().engine.url
    raise RuntimeError(
        f"cannot migrate with {url.password!r} ({url.render_as_string(hide_password=False)})"
        f" from {os.environ['DATABASE_URL']}"
    )


def downgrade():
    pass
"""

# Printable, no blank (a URL cannot hold one raw), no "*" (the mask itself, which would make
# "a***" read as a leak of "a" + "***"); URL delimiters and quotes on purpose.
_PASSWORD_CHARS = st.one_of(
    st.sampled_from("/@%:?#&'\"\\+=;,"),
    st.characters(
        min_codepoint=33,
        max_codepoint=0x24F,
        blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp"),
        blacklist_characters="*",
    ),
)
passwords = st.text(_PASSWORD_CHARS, min_size=8, max_size=24)


@pytest.fixture(scope="module")
def leak_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An Alembic project whose only revision raises an error holding the password."""
    root = tmp_path_factory.mktemp("leak-project")
    (root / "migrations" / "versions").mkdir(parents=True)
    (root / "migrations" / "env.py").write_text(ENV_PY)
    (root / "migrations" / "versions" / "a1.py").write_text(FAILING_REVISION)
    (root / "alembic.ini").write_text("[alembic]\nscript_location = migrations\n")
    (root / "secrets").mkdir()
    return root


@pytest.fixture(scope="module")
def leak_database(postgres_server: PostgresServer) -> Iterator[tuple[PostgresServer, str]]:
    """A role ``leaktest`` (password set per example) owning a fresh database."""
    postgres_server.create_role("leaktest", "initial-password")
    name = postgres_server.create_database(owner="leaktest")
    yield postgres_server, name
    with contextlib.suppress(Exception):
        postgres_server.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        postgres_server.execute('DROP ROLE IF EXISTS "leaktest"')


def _visible(result: subprocess.CompletedProcess[str]) -> str:
    """Everything a user sees, with JSON lines decoded (a JSON-escaped leak is a leak too)."""
    decoded = []
    for line in result.stderr.splitlines():
        with contextlib.suppress(ValueError):
            decoded += [str(value) for value in json.loads(line).values()]
    return "\n".join([result.stdout, result.stderr, *decoded])


def _forms(password: str) -> set[str]:
    # as written, and percent-encoded as we, urllib, quote_plus and SQLAlchemy's URLs do it
    encoded = (quote(password, safe=""), quote(password), quote_plus(password))
    return {password, *encoded, quote(password, safe=" +")}


@pytest.mark.slow
@given(password=passwords, fmt=st.sampled_from(["text", "json"]))
@settings(
    max_examples=16, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_a_url_password_never_shows_in_any_form(
    password: str, fmt: str, leak_project: Path, leak_database: tuple[PostgresServer, str]
) -> None:
    server, dbname = leak_database
    server.execute(sql.SQL("ALTER ROLE leaktest PASSWORD {}").format(sql.Literal(password)))
    encoded = server.url(user="leaktest", password=password, dbname=dbname)
    address = f"127.0.0.1:{server.port}/{dbname}"
    quoted, superuser = quote(password, safe=""), f"postgresql://{server.superuser}"
    env = clean_env(
        leak_project / "secrets",
        ENTRYKIT_LOG_LEVEL="debug",
        ENTRYKIT_LOG_FORMAT=fmt,
        ENTRYKIT_WAIT_TIMEOUT="1",
    )
    raw = f"postgresql://leaktest:{password}@{address}"
    cases = [
        # psycopg cannot parse it: its message quotes the password as written
        (["wait"], {"DATABASE_URL": f"postgresql://leaktest:{quoted}%zz@{address}"}, {10}),
        # as written, unencoded: "/", "@", "?" or "#" cut it where a parser likes
        (["wait"], {"DATABASE_URL": raw}, {0, 10, 20, 21}),
        # refused login (a wrong password for the superuser), the password in the query
        (["wait"], {"DATABASE_URL": f"{superuser}@{address}?password={quoted}"}, {21}),
        # plan refuses (10) what the wait would: a raw password may break the URL
        (
            ["plan"],
            {"DATABASE_URL": raw, "ENTRYKIT_MIGRATE_URL": f"{raw}?sslpassword={quoted}"},
            {0, 10},
        ),
        # a migration that fails with the decoded password in its message
        (["migrate"], {"DATABASE_URL": encoded}, {30}),
    ]
    with ThreadPoolExecutor(len(cases)) as pool:  # side by side: each start costs ~0.5 s
        results = pool.map(
            lambda case: run_entrykit(case[0], {**env, **case[1]}, cwd=leak_project), cases
        )
        for (args, urls, codes), result in zip(cases, results, strict=True):
            assert result.returncode in codes, (args, urls, result.stderr[-2000:])
            seen = _visible(result)
            for form in _forms(password):
                assert form not in seen, (args, form, seen[-3000:])
