"""Log lines as docs/reference.md describes them, and redaction in every shape of output."""

from __future__ import annotations

import io
import itertools
import json
import logging
import logging.config
import re
import threading
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from entrykit import logs


@pytest.fixture(autouse=True)
def no_secrets_yet(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no registered secret (other tests in this process add some)."""
    monkeypatch.setattr(logs, "_forms", ())


@pytest.fixture
def stream() -> io.StringIO:
    out = io.StringIO()
    logs.configure("debug", "text", out)
    return out


def test_text_line_shape(stream: io.StringIO) -> None:
    logging.getLogger("entrykit.wait").info("database %s ready after %.2f s", "db:5432", 1.314)
    line = stream.getvalue().rstrip("\n")
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO  wait     database db:5432 ready after 1\.31 s",
        line,
    ), line


def test_json_line_shape() -> None:
    out = io.StringIO()
    logs.configure("info", "json", out)
    logging.getLogger("entrykit.migrate").error("boom", extra={"exit_code": 30})
    entry = json.loads(out.getvalue())
    assert entry["level"] == "error"
    assert entry["step"] == "migrate"
    assert entry["msg"] == "boom"
    assert entry["exit_code"] == 30
    assert entry["ts"].endswith("Z")


def test_level_filters(stream: io.StringIO) -> None:
    logs.configure("warning", "text", stream)
    logging.getLogger("entrykit.wait").info("hidden")
    logging.getLogger("entrykit.wait").warning("shown")
    assert "hidden" not in stream.getvalue()
    assert "shown" in stream.getvalue()


def test_library_loggers_get_their_step(stream: io.StringIO) -> None:
    logging.getLogger("alembic.runtime.migration").info("Running upgrade")
    logging.getLogger("huggingface_hub.file_download").warning("slow")
    assert " migrate  Running upgrade" in stream.getvalue()
    assert " prefetch slow" in stream.getvalue()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://app:hunter2@db:5432/app", "postgresql://app:***@db:5432/app"),
        ("postgresql://app:p%40ss%2Fw%3Ard%25@db/app", "postgresql://app:***@db/app"),
        ("postgres://app:raw@pass@db/app", "postgres://app:***@db/app"),
        (
            "postgresql+asyncpg://u:x@h/d?sslmode=require",
            "postgresql+asyncpg://u:***@h/d?sslmode=require",
        ),
        ("https://user:tok@mirror.example/x", "https://user:***@mirror.example/x"),
        ("postgresql://nopassword@db/app", "postgresql://nopassword@db/app"),
        ("postgresql://u:pa/ss1234@h:1/db", "postgresql://u:***@h:1/db"),  # a raw "/"
        ("postgresql://u:pa/ss@wo/rd@h/db", "postgresql://u:***@h/db"),
        (
            "postgresql://u@h/d?sslmode=require&password=qpass1234&sslpassword=ssl%2Fpw",
            "postgresql://u@h/d?sslmode=require&password=***&sslpassword=***",
        ),
        ("mysql://u@h/d?PASSWORD=x1#frag", "mysql://u@h/d?PASSWORD=***#frag"),
        ("host=db password=conninfo-pw user=app", "host=db password=*** user=app"),
        ("postgresql://u:0000/@h/db", "postgresql://u:***@h/db"),  # digits and "/": no port
        ("http://host:8080/path@x", "http://host:***@x"),  # as ambiguous: hidden too
        (
            "redis://:pw@r:6379/0,postgresql://u:pw2@db/x,tcp://db:5432",
            "redis://:***@r:6379/0,postgresql://u:***@db/x,tcp://db:5432",
        ),
        ("'postgresql://u:p@ss@h/d': refused", "'postgresql://u:***@h/d': refused"),
    ],
)
def test_url_passwords_are_masked(url: str, shown: str) -> None:
    assert logs.mask_url(url) == shown


def test_secret_values_and_their_url_encoding_are_masked(stream: io.StringIO) -> None:
    logs.add_secret("s3cr3t/va!ue")
    logs.add_secret("abc")  # too short to mask safely
    logging.getLogger("entrykit.secrets").info("got %r and %s", "s3cr3t/va!ue", "s3cr3t%2Fva%21ue")
    assert "s3cr3t" not in stream.getvalue()
    assert stream.getvalue().count("***") == 2


def test_tracebacks_are_redacted(stream: io.StringIO) -> None:
    logs.add_secret("traceback-secret-42")
    try:
        raise RuntimeError("failed with traceback-secret-42 inside")
    except RuntimeError:
        logging.getLogger("entrykit.migrate").exception("unexpected")
    assert "Traceback" in stream.getvalue()
    assert "traceback-secret-42" not in stream.getvalue()


FORGED = "2026-01-01T00:00:00.000Z INFO  prestart all good"
LOG_LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ")


@pytest.mark.parametrize("breaker", ["\n", "\r\n", "\r", "\u2028", "\x0b"])
def test_no_line_of_a_record_passes_for_a_log_line(stream: io.StringIO, breaker: str) -> None:
    """Whatever a message quotes (a server's answer, a user's argument, an error's detail),
    and a traceback quoting it too: each later line starts with whitespace."""
    log = logging.getLogger("entrykit.wait")
    log.info("not ready: %s", f"answer{breaker}{FORGED}")
    try:
        raise RuntimeError(f"first{breaker}{FORGED}")
    except RuntimeError:
        log.exception("failed%s%s", breaker, FORGED)
    lines = stream.getvalue().splitlines()
    assert sum(1 for line in lines if LOG_LINE.match(line)) == 2, lines
    assert all(LOG_LINE.match(line) or line[:1].isspace() or not line for line in lines), lines
    assert sum(FORGED in line for line in lines) == 3  # nothing lost, only indented


def test_a_secret_of_several_lines_is_hidden_whole(stream: io.StringIO) -> None:
    key = "-----BEGIN KEY-----\nMIIEvQIBADANBgkqhkiG9w0B\n-----END KEY-----"
    logs.add_secret(key)
    logging.getLogger("entrykit.secrets").info("loaded %s", key)
    assert "MIIEvQIBADANBgkqhkiG9w0B" not in stream.getvalue()


def test_logging_survives_reconfiguration_by_file_config(stream: io.StringIO) -> None:
    saved = logs.snapshot()
    logging.config.dictConfig({"version": 1, "disable_existing_loggers": True})
    logs.restore_after(saved)
    logging.getLogger("entrykit.migrate").info("still here")
    assert "still here" in stream.getvalue()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        # psycopg quotes a bad escape as written; a URL parser may cut a raw "/" or "@"
        ("postgresql://u:hunter2pw%zz@h:1/db", ['token: "hunter2pw%zz"']),
        ("postgresql://u:p%40ss%2Fword@h/db", ["password p@ss/word", "p%40ss%2Fword"]),
        ("postgresql://u:pa/ss1234@h:1/db", ["invalid port 'pa/ss1234'", "ss1234 at", "pa/ss1234"]),
        ("postgresql://u:pa%20ss@h/db", ["pa ss", "pa+ss", "pa%20ss"]),
        (
            "postgresql://u@h/db?password=q%2Fpass1&sslpassword=sslsecret9",
            ["q/pass1", "sslsecret9"],
        ),
        ("https://user:hub-mirror-token@mirror.example/", ["token hub-mirror-token"]),
    ],
)
def test_url_passwords_are_secrets_in_every_form(url: str, shown: list[str]) -> None:
    logs.add_url_secrets(url)
    for text in shown:
        assert "***" in logs.redact(text), text
        for word in ("hunter2", "p@ss", "ss1234", "pa ss", "q/pass", "sslsecret", "mirror-token"):
            assert word not in logs.redact(text), text


def test_settings_register_url_passwords_as_they_are_read() -> None:
    from entrykit.settings import Settings

    environ = {
        "DATABASE_URL": "postgresql://u:db-secret%21@h/d",
        "ENTRYKIT_DATABASE_URL": "postgresql://u:entrykit-url-pw@h/d",
        "ENTRYKIT_MIGRATE_URL": "postgresql://u@h/d?password=migrate-pw",
        "ENTRYKIT_WAIT_HTTP": "http://a:http-pw-1@h/x,http://b:http-pw-2@h/y",
        "ENTRYKIT_WAIT_FOR": "redis://:redis-pw@r:6379/0",
        "HF_ENDPOINT": "https://u:mirror-pw@m/",
    }
    Settings.load(environ=environ)
    text = "db-secret! entrykit-url-pw migrate-pw http-pw-1 http-pw-2 redis-pw mirror-pw"
    assert logs.redact(text) == " ".join(["***"] * 7)


def test_overlapping_secrets_are_hidden_whole() -> None:
    logs.add_secret("zzpass")
    logs.add_secret("passwordlong")
    assert logs.redact("a zzpasswordlong b") == "a *** b"
    assert logs.redact("zzpass zzpass") == "*** ***"


def test_escaped_forms_are_hidden() -> None:
    secret = 'qu"ote\\back'
    logs.add_secret(secret)
    assert logs.redact(repr(secret)) == "'***'"
    assert logs.redact(json.dumps(secret)) == '"***"'


def test_sqlalchemys_rendering_of_a_url_password_is_hidden() -> None:
    from sqlalchemy.engine import make_url

    password = "a/b#c?d%e f+g:h@i"
    logs.add_secret(password)
    url = make_url(f"postgresql://u:{quote(password, safe='')}@h/d")
    assert logs.redact(url.render_as_string(hide_password=False)) == "postgresql://u:***@h/d"


def _seconds(text: str) -> float:
    started = time.perf_counter()
    logs.redact(text)
    return time.perf_counter() - started


@pytest.mark.parametrize(
    "unit",
    ["x", "a://b:", "a://", "password=", "x://u:p@", "@", "a:", "://x:", "p://u:pa/ss/", "aaab"],
)
def test_redaction_is_linear_in_the_length_of_the_text(unit: str) -> None:
    """Hostile lines (a 120 000-character argument took 25 s once): ten times the text may
    cost about ten times the time, never a hundred times."""
    for value in ("aaaa", "aaaab", "x" * 50, "p://u:pa"):
        logs.add_secret(value)
    small = unit * (100_000 // len(unit))
    large = unit * (1_000_000 // len(unit))
    small_time = min(_seconds(small) for _ in range(3))
    large_time = min(_seconds(large) for _ in range(3))
    assert large_time < 5
    assert large_time < 30 * max(small_time, 0.01), (small_time, large_time)


def test_a_line_that_cannot_be_formatted_shows_no_argument(
    stream: io.StringIO, capsys: pytest.CaptureFixture[str]
) -> None:
    # logging's own report of a bad line prints the arguments raw on stderr: never here.
    # (Handed to entrykit's handler alone: pytest's capture handler would raise.)
    (handler,) = [h for h in logging.getLogger().handlers if isinstance(h, logs._EntrykitHandler)]
    args = ("unformattable-secret-value",)
    handler.handle(logging.LogRecord("entrykit.wait", logging.INFO, "x", 1, "%d tries", args, None))
    captured = capsys.readouterr()
    assert "unformattable-secret-value" not in captured.err + stream.getvalue()
    assert "a log line was lost: TypeError" in stream.getvalue()


def test_an_uncaught_thread_exception_is_logged_redacted(stream: io.StringIO) -> None:
    logs.add_secret("thread-secret-77")

    def fail() -> None:
        raise RuntimeError("boom thread-secret-77")

    thread = threading.Thread(target=fail, name="worker-x")
    thread.start()
    thread.join()
    assert "internal error in thread worker-x" in stream.getvalue()
    assert "thread-secret-77" not in stream.getvalue()


@given(
    forms=st.lists(st.text("ab", min_size=4, max_size=7), min_size=1, max_size=4),
    text=st.text("abc", max_size=60),
)
@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_every_character_of_every_occurrence_is_hidden_and_nothing_else(
    forms: list[str], text: str
) -> None:
    """Against a brute-force scan: overlapping, adjacent and nested occurrences included."""
    covered = [False] * len(text)
    for form in forms:
        for start in range(len(text)):
            if text.startswith(form, start):
                covered[start : start + len(form)] = [True] * len(form)
    expected = "".join(
        "***" if hidden else "".join(chars)
        for hidden, group in itertools.groupby(zip(covered, text, strict=True), key=lambda p: p[0])
        for chars in [[char for _, char in group]]
    )
    logs._forms = tuple(sorted(set(forms)))
    assert logs.redact(text) == expected


def test_pieces_are_secrets_only_where_a_parser_could_cut_the_password() -> None:
    # Written raw, ':' cuts the password for libpq ("invalid port 'hunter2'"): the piece hides.
    logs.add_url_secrets("postgresql://u:abcd:hunter2@db/app")
    assert logs.redact("invalid port 'hunter2'") == "invalid port '***'"
    # Percent-encoded, nothing cuts it: its pieces are ordinary words, left alone.
    logs.add_url_secrets("postgresql://u:pg-super%25%40%2F%3Asecret@db/app")
    assert logs.redact("loading secrets") == "loading secrets"
    assert logs.redact("pw pg-super%@/:secret") == "pw ***"


def test_redacted_stdio_redacts_whole_lines_and_puts_the_streams_back() -> None:
    import sys

    logs.add_secret("stdio-secret-1")
    out, err = io.StringIO(), io.StringIO()
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    try:
        with logs.redacted_stdio():
            print("printed stdio-secret-1")
            sys.stdout.write("in pieces stdio-")
            sys.stdout.flush()  # a line's start stays held: the secret is not whole yet
            assert out.getvalue() == "printed ***\n"
            sys.stdout.write("secret-1 end\n")
            sys.stdout.write("progress stdio-secret-1\r")  # a progress bar: shown at once
            assert out.getvalue().endswith("\nprogress ***\r")
            sys.stdout.write("held stdio-secret-1")
            print("to stderr stdio-secret-1", file=sys.stderr)
            assert sys.stdout.encoding == out.encoding and not sys.stdout.isatty()
        restored = sys.stdout, sys.stderr
    finally:
        sys.stdout, sys.stderr = saved
    assert restored == (out, err)
    assert out.getvalue() == "printed ***\nin pieces *** end\nprogress ***\rheld ***"
    assert err.getvalue() == "to stderr ***\n"


def test_redacted_stdio_leaves_streams_swapped_inside_alone() -> None:
    import sys

    saved = sys.stdout
    other = io.StringIO()
    try:
        with logs.redacted_stdio():
            sys.stdout = other  # e.g. contextlib.redirect_stdout left unbalanced by env.py
        assert sys.stdout is other
    finally:
        sys.stdout = saved


def test_redacted_stdio_passes_the_file_descriptor_through(tmp_path: Path) -> None:
    import sys

    with (tmp_path / "out").open("w") as file:
        saved = sys.stdout
        sys.stdout = file
        try:
            with logs.redacted_stdio():
                assert sys.stdout.fileno() == file.fileno()
        finally:
            sys.stdout = saved
