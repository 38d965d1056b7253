"""Log lines as docs/reference.md describes them, and redaction in every shape of output."""

from __future__ import annotations

import io
import json
import logging
import logging.config
import re

import pytest

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


def test_logging_survives_reconfiguration_by_file_config(stream: io.StringIO) -> None:
    saved = logs.snapshot()
    logging.config.dictConfig({"version": 1, "disable_existing_loggers": True})
    logs.restore_after(saved)
    logging.getLogger("entrykit.migrate").info("still here")
    assert "still here" in stream.getvalue()
