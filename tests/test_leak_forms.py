"""A secret in every form it takes on its way out (issue "Hardening" §1): each line of a
multi-line secret, the pieces of a URL password holding a raw "@" and "/" (as libpq and
redis-py cut it), SQL's doubled "'" and SQLAlchemy's doubled "%", a query password holding a
raw "#" or blank, and print() from env.py and migrations run in process. Real `entrykit`
processes, a real PostgreSQL, real Alembic projects; the parsers' own readings (psycopg's
conninfo_to_dict) for the property tests."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from entrykit_process import clean_env, run_entrykit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from postgres_fixtures import PostgresServer

from entrykit import logs

PEM_LINES = (
    "-----BEGIN PRIVATE KEY-----",
    "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj",
    "MzEfYyjiWA4R4/M2bS1GB4t7NXp98C3SC6dVMvDuictGeurT8jNbvJZHtCSuYEvu",
    "-----END PRIVATE KEY-----",
)


@pytest.fixture
def no_secrets_yet(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process tests start with no registered secret (other tests add some)."""
    monkeypatch.setattr(logs, "_forms", ())


@pytest.fixture(scope="module")
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _prestart_output(stderr: str) -> list[str]:
    """What the start-up command printed, as logged (``NAME | line``)."""
    return [line.split(" | ", 1)[1] for line in stderr.splitlines() if " | " in line]


# -- 1. a multi-line secret printed by a start-up command ------------------------------------


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_each_line_of_a_multi_line_secret_is_hidden_in_command_output(
    tmp_path: Path, newline: str
) -> None:
    (tmp_path / "tls_key").write_text(newline.join(PEM_LINES) + newline, newline="")
    env = clean_env(
        tmp_path,
        ENTRYKIT_SECRETS="TLS_KEY",
        ENTRYKIT_PRESTART='sh -c "echo \\"$TLS_KEY\\""',
    )
    result = run_entrykit(["run", "--", "true"], env)
    assert result.returncode == 0, result.stderr
    assert _prestart_output(result.stderr) == ["***"] * len(PEM_LINES), result.stderr
    for line in PEM_LINES:
        assert line not in result.stderr + result.stdout


def test_lines_of_a_secret_are_secrets_too(no_secrets_yet: None) -> None:
    logs.add_secret("first-line\r\nsecond-line\nok\n")
    assert logs.redact("first-line") == "***"
    assert logs.redact("got 'second-line'") == "got '***'"
    assert logs.redact("ok") == "ok"  # a line shorter than MIN_SECRET_LENGTH stays


# -- 2. a raw "@" followed by "/" in a URL password ------------------------------------------


def test_a_raw_at_and_slash_password_is_hidden_in_every_piece_libpq_shows(
    tmp_path: Path, closed_port: int
) -> None:
    url = f"postgresql://app:P@ssw0rd/2024@127.0.0.1:{closed_port}/app"
    env = clean_env(tmp_path, DATABASE_URL=url, ENTRYKIT_WAIT_TIMEOUT="1")
    waited = run_entrykit(["wait"], env)
    assert waited.returncode == 20, waited.stderr
    assert "failed to resolve host '***'" in waited.stderr  # libpq read "ssw0rd" as the host
    printed = run_entrykit(
        ["run", "--", "true"],
        {**env, "ENTRYKIT_WAIT": "0", "ENTRYKIT_PRESTART": "echo P@ssw0rd/2024 ssw0rd 2024"},
    )
    assert printed.returncode == 0, printed.stderr
    assert _prestart_output(printed.stderr) == ["*** *** ***"], printed.stderr
    for piece in ("ssw0rd", "2024"):
        assert piece not in waited.stderr + printed.stderr


def test_a_redis_password_cut_by_redis_py_is_hidden(tmp_path: Path) -> None:
    url = "redis://:secretA@secretB/secretC#rd@127.0.0.1:1/0"
    waited = run_entrykit(["wait", url, "--timeout", "1"], clean_env(tmp_path))
    assert waited.returncode == 10, waited.stderr
    assert "the database must be a number, not '***'" in waited.stderr
    for piece in ("secretA", "secretB", "secretC"):
        assert piece not in waited.stderr + waited.stdout


def test_host_and_database_of_an_ordinary_url_stay_visible(tmp_path: Path) -> None:
    env = clean_env(
        tmp_path,
        DATABASE_URL="postgresql://u:pw-secret@myhost/mydb?application_name=x@y",
        ENTRYKIT_PRESTART="echo myhost mydb pw-secret",
    )
    plan = run_entrykit(["plan"], env)
    assert plan.returncode == 0, plan.stderr
    assert "echo myhost mydb ***" in plan.stdout
    assert "pw-secret" not in plan.stdout + plan.stderr


# -- 3. SQL's doubled "'" and SQLAlchemy's doubled "%" in a failed statement -----------------

ENV_PY = """\
from alembic import context

config = context.config
context.configure(connection=config.attributes["connection"])
with context.begin_transaction():
    context.run_migrations()
"""

ALTER_ROLE = """\
import os

from alembic import op

revision = "a1"
down_revision = None


def upgrade():
    password = os.environ["ROLE_PASSWORD"].replace("'", "''")
    op.execute(f"ALTER ROLE no_such_role_x PASSWORD '{password}'")


def downgrade():
    pass
"""

ROLE_PASSWORDS = ["Xk9%q2Lm7Zp", "it's-a-secret", "Mi%x'ed-Up9"]


def _alembic_project(root: Path, env_py: str, revision: str) -> Path:
    (root / "migrations" / "versions").mkdir(parents=True)
    (root / "migrations" / "env.py").write_text(env_py)
    (root / "migrations" / "versions" / "a1.py").write_text(revision)
    (root / "alembic.ini").write_text("[alembic]\nscript_location = migrations\n")
    (root / "secrets").mkdir()
    return root


@pytest.fixture
def database_url(postgres_server: PostgresServer) -> Iterator[str]:
    name = postgres_server.create_database()
    yield postgres_server.url(dbname=name)
    postgres_server.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.slow
@pytest.mark.parametrize("password", ROLE_PASSWORDS)
@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_failed_statement_quoting_a_secret_shows_no_form_of_it(
    tmp_path: Path, database_url: str, password: str, fmt: str
) -> None:
    root = _alembic_project(tmp_path, ENV_PY, ALTER_ROLE)
    (root / "secrets" / "role_password").write_text(password)
    env = clean_env(
        root / "secrets",
        DATABASE_URL=database_url,
        ENTRYKIT_SECRETS="ROLE_PASSWORD",
        ENTRYKIT_LOG_FORMAT=fmt,
    )
    result = run_entrykit(["migrate"], env, cwd=root)
    assert result.returncode == 30, result.stderr
    assert "ALTER ROLE no_such_role_x PASSWORD" in result.stderr  # SQLAlchemy's [SQL: ...]
    sql = password.replace("'", "''")
    for form in {password, sql, password.replace("%", "%%"), sql.replace("%", "%%")}:
        assert form not in result.stderr + result.stdout, (form, result.stderr)


@pytest.mark.parametrize(
    ("statement", "shown"),
    [
        ("[SQL: ALTER ROLE r PASSWORD 'Xk9%%q2Lm7Zp']", "[SQL: ALTER ROLE r PASSWORD '***']"),
        ("PASSWORD 'it''s-a-secret'", "PASSWORD '***'"),
        ("[SQL: PASSWORD 'Mi%%x''ed-Up9']", "[SQL: PASSWORD '***']"),
    ],
)
def test_doubled_quotes_and_percents_are_hidden(
    no_secrets_yet: None, statement: str, shown: str
) -> None:
    for password in ROLE_PASSWORDS:
        logs.add_secret(password)
    assert logs.redact(statement) == shown


# -- 4. a query-string password holding a raw "#", blank or quote ----------------------------


@pytest.mark.parametrize(
    ("password", "tail", "code"),
    [
        ("abcd#efghTail9", "efghTail9", 0),
        ("correct horse battery", "horse battery", 10),  # libpq refuses the raw blanks
        ('quote"dTail77', "dTail77", 0),
    ],
)
def test_a_query_password_is_hidden_up_to_the_next_parameter(
    tmp_path: Path, password: str, tail: str, code: int
) -> None:
    url = f"postgresql://u@127.0.0.1:1/db?password={password}"
    plan = run_entrykit(["plan"], clean_env(tmp_path, DATABASE_URL=url))
    assert plan.returncode == code, plan.stderr
    assert "postgresql://u@127.0.0.1:1/db?password=***" in plan.stdout + plan.stderr
    assert tail not in plan.stdout + plan.stderr
    listed = f"{url}&sslmode=disable"  # the next parameter ends it: it stays visible
    plan = run_entrykit(["plan"], clean_env(tmp_path, DATABASE_URL=listed))
    assert plan.returncode == code, plan.stderr
    assert "?password=***&sslmode=disable" in plan.stdout + plan.stderr, plan.stdout
    assert tail not in plan.stdout + plan.stderr


# -- 5. print() from env.py and from a migration run in process ------------------------------

PRINTING_ENV_PY = """\
import os
import sys
from urllib.parse import unquote, urlsplit

from alembic import context

PASSWORD = unquote(urlsplit(os.environ["DATABASE_URL"]).password)
print("env.py stdout", PASSWORD)
print("env.py stderr", PASSWORD, file=sys.stderr)
sys.stdout.write("env.py in pieces " + PASSWORD[:4])
sys.stdout.flush()
sys.stdout.write(PASSWORD[4:] + " end\\n")

config = context.config
if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True)
else:
    context.configure(connection=config.attributes["connection"])
with context.begin_transaction():
    context.run_migrations()
"""

PRINTING_REVISION = """\
import os
import sys
from urllib.parse import unquote, urlsplit

from alembic import op

revision = "a1"
down_revision = None
PASSWORD = unquote(urlsplit(os.environ["DATABASE_URL"]).password)
print("revision loaded", PASSWORD)


def upgrade():
    print("upgrade stdout", PASSWORD)
    print("upgrade stderr", PASSWORD, file=sys.stderr, flush=True)
    op.execute("SELECT 'the sql product'")


def downgrade():
    pass
"""

PRINTED_PASSWORD = "Pr1nted/Pass@word%"


@pytest.fixture
def printing_project(
    tmp_path: Path, postgres_server: PostgresServer
) -> Iterator[tuple[Path, dict[str, str]]]:
    """An Alembic project whose env.py and revision print the DATABASE_URL password, and a
    role with that password owning a fresh database."""
    root = _alembic_project(tmp_path, PRINTING_ENV_PY, PRINTING_REVISION)
    role = f"printer_{tmp_path.name[-8:].lower().replace('-', '_')}"
    postgres_server.create_role(role, PRINTED_PASSWORD)
    name = postgres_server.create_database(owner=role)
    url = postgres_server.url(user=role, password=PRINTED_PASSWORD, dbname=name)
    yield root, clean_env(root / "secrets", DATABASE_URL=url)
    postgres_server.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    postgres_server.execute(f'DROP ROLE IF EXISTS "{role}"')


@pytest.mark.slow
def test_print_from_env_py_and_migrations_is_redacted(
    printing_project: tuple[Path, dict[str, str]],
) -> None:
    root, env = printing_project
    result = run_entrykit(["migrate"], env, cwd=root)
    assert result.returncode == 0, result.stderr
    assert "applied a1" in result.stderr
    for shown in ("env.py stdout ***", "env.py in pieces *** end", "upgrade stdout ***"):
        assert shown in result.stdout, result.stdout
    for shown in ("env.py stderr ***", "upgrade stderr ***"):
        assert shown in result.stderr, result.stderr
    assert "revision loaded ***" in result.stdout + result.stderr
    for piece in (PRINTED_PASSWORD, "Pr1nted", "Pass@word", "word%"):
        assert piece not in result.stdout + result.stderr
    # ENTRYKIT_MIGRATE=wait reads the heads through env.py too
    waited = run_entrykit(["run", "--", "true"], {**env, "ENTRYKIT_MIGRATE": "wait"}, cwd=root)
    assert waited.returncode == 0, waited.stderr
    assert "env.py stdout ***" in waited.stdout
    assert "env.py stderr ***" in waited.stderr
    assert PRINTED_PASSWORD not in waited.stdout + waited.stderr


@pytest.mark.slow
def test_sql_output_is_the_product_and_env_py_prints_are_redacted(
    printing_project: tuple[Path, dict[str, str]],
) -> None:
    root, env = printing_project
    result = run_entrykit(["migrate", "--sql"], env, cwd=root)
    assert result.returncode == 0, result.stderr
    assert "SELECT 'the sql product';" in result.stdout  # written as is
    assert "env.py stdout ***" in result.stdout
    assert "upgrade stdout ***" in result.stdout
    assert PRINTED_PASSWORD not in result.stdout + result.stderr


# -- 6. every class, over generated passwords ------------------------------------------------

_PLAIN = st.text(
    "abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789-_", min_size=4, max_size=10
)
_QUERY_CHARS = st.sampled_from("abcdefghXYZ0123456789#\" '%@/?")


def _conninfo(url: str) -> dict[str, str]:
    """What libpq reads from ``url`` (psycopg asks libpq itself); its error as ``error``."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    try:
        return {key: str(value) for key, value in conninfo_to_dict(url).items()}
    except (psycopg.Error, UnicodeDecodeError) as error:  # "%a0": not UTF-8 once decoded
        return {"error": str(error)}


@given(lines=st.lists(_PLAIN, min_size=2, max_size=5), crlf=st.booleans())
@settings(max_examples=50, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_generated_multi_line_secrets(no_secrets_yet: None, lines: list[str], crlf: bool) -> None:
    logs._forms = ()
    logs.add_secret(("\r\n" if crlf else "\n").join(lines))
    for line in lines:
        assert line not in logs.redact(f"printed {line} here")


@given(
    first=_PLAIN,
    host_piece=_PLAIN,
    path_piece=_PLAIN,
    scheme=st.sampled_from(["postgresql", "postgres"]),
)
@settings(max_examples=50, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_generated_raw_at_and_slash_passwords(
    no_secrets_yet: None, first: str, host_piece: str, path_piece: str, scheme: str
) -> None:
    logs._forms = ()
    password = f"{first}@{host_piece}/{path_piece}"
    url = f"{scheme}://app:{password}@127.0.0.1:5432/app"
    logs.add_url_secrets(url)
    read = _conninfo(url)  # libpq: password "first", host "host_piece", dbname "path_piece@..."
    seen = logs.redact(f"{read} and printed {password}")
    for piece in (first, host_piece, path_piece, password):
        assert piece not in seen, (piece, seen)


@given(password=st.text(_QUERY_CHARS, min_size=4, max_size=16))
@settings(max_examples=80, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_generated_query_passwords(no_secrets_yet: None, password: str) -> None:
    logs._forms = ()
    url = f"postgresql://u@127.0.0.1:1/db?password={password}"
    logs.add_url_secrets(url)
    read = _conninfo(url)  # libpq: "%XX" decoded, the rest up to "&" or the end, or an error
    written = password.strip()  # blanks around it are no secret
    for shown in (str(read), repr(read), url, f"password={written} rejected"):
        seen = logs.redact(shown)
        for value in (written, read.get("password", "").strip()):
            if len(value) >= logs.MIN_SECRET_LENGTH:
                assert value not in seen, (value, seen)


@given(
    password=st.text(st.sampled_from("abcXYZ019%'-"), min_size=4, max_size=14).filter(
        lambda p: "%" in p or "'" in p
    )
)
@settings(max_examples=50, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_generated_sql_quoted_secrets(no_secrets_yet: None, password: str) -> None:
    logs._forms = ()
    logs.add_secret(password)
    sql = password.replace("'", "''")
    statement = f"[SQL: ALTER ROLE r PASSWORD '{sql.replace('%', '%%')}'] or '{sql}'"
    assert logs.redact(statement) == "[SQL: ALTER ROLE r PASSWORD '***'] or '***'"
