"""Logging on stderr, as text or JSON lines, with every secret replaced by ``***``.

Redaction happens on the finished line (message, arguments and traceback together), so a
secret cannot slip out through a ``%r`` or an exception's text.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from typing import TextIO

from entrykit.errors import EntrykitError

MASK = "***"
MIN_SECRET_LENGTH = 4  # shorter values would mask ordinary words ("on", "1")

# scheme://user:password@ -> scheme://user:***@ ; the password runs to the last "@" before
# a "/" or blank, so a raw "@" inside it is hidden too.
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)[^\s/]*@")

_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_pattern: re.Pattern[str] | None = None

_STEP_OF_LIBRARY = {"alembic": "migrate", "sqlalchemy": "migrate", "huggingface_hub": "prefetch"}


def add_secret(value: str) -> None:
    """Hide ``value`` (and its URL-encoded form) in everything entrykit writes from now on."""
    from urllib.parse import quote

    global _pattern
    if len(value) < MIN_SECRET_LENGTH:
        return
    with _secrets_lock:
        _secrets.update({value, quote(value, safe="")})
        ordered = sorted(_secrets, key=len, reverse=True)  # longest first: no partial leaks
        _pattern = re.compile("|".join(re.escape(secret) for secret in ordered))


def redact(text: str) -> str:
    """``text`` with every known secret and every URL password replaced by ``***``."""
    pattern = _pattern
    if pattern is not None:
        text = pattern.sub(MASK, text)
    return _URL_PASSWORD.sub(lambda m: m.group("head") + MASK + "@", text)


def mask_url(url: str) -> str:
    """A URL fit for output: its password (if any) shown as ``***``."""
    return redact(url)


def log_failure(logger: logging.Logger, error: EntrykitError, seconds: float | None = None) -> None:
    """Log ``error`` with the exit code it leads to (and the step's duration), only once."""
    if error.logged:
        return
    extra: dict[str, object] = {"exit_code": error.exit_code}
    if seconds is None:
        logger.error("%s (exit %d)", error, error.exit_code, extra=extra)
    else:
        extra["duration"] = round(seconds, 3)
        logger.error(
            "failed after %.2f s: %s (exit %d)", seconds, error, error.exit_code, extra=extra
        )
    error.logged = True


def step_of(logger_name: str) -> str:
    """The step column of a log line: ``entrykit.wait`` -> ``wait``, ``alembic`` -> ``migrate``."""
    head, _, rest = logger_name.partition(".")
    if head == "entrykit":
        return rest.split(".", 1)[0] or "entrykit"
    return _STEP_OF_LIBRARY.get(head, head)


def _timestamp(created: float) -> str:
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


class TextFormatter(logging.Formatter):
    """``2026-11-22T05:00:00.123Z INFO  wait     database db:5432 ready after 1.31 s``."""

    def format(self, record: logging.LogRecord) -> str:
        line = (
            f"{_timestamp(record.created)} {record.levelname:<5} "
            f"{step_of(record.name):<8} {record.getMessage()}"
        )
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return redact(line)


class JsonFormatter(logging.Formatter):
    """One JSON object per line with ``ts``, ``level``, ``step``, ``msg`` (and ``exc``)."""

    def format(self, record: logging.LogRecord) -> str:
        import json

        entry: dict[str, object] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "step": step_of(record.name),
            "msg": redact(record.getMessage()),
        }
        for key in ("exit_code", "duration"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


class _EntrykitHandler(logging.StreamHandler[TextIO]):
    """Marks the handler entrykit installed, so it can be found again after fileConfig."""


def configure(level: str = "info", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Send log records to stderr (or ``stream``) in the chosen format; replaces earlier set-up."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _EntrykitHandler)]:
        root.removeHandler(handler)
    handler = _EntrykitHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    numeric = getattr(logging, level.upper(), logging.INFO)
    root.setLevel(numeric)
    # Libraries are chatty at debug; keep them one notch quieter unless asked for debug.
    for name in ("urllib3", "httpx", "httpcore", "httpx2", "httpcore2", "filelock", "asyncio"):
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))
    logging.captureWarnings(True)


def restore_after(snapshot: tuple[list[logging.Handler], int]) -> None:
    """Put back the root handlers and level taken by :func:`snapshot` (after fileConfig)."""
    handlers, level = snapshot
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    for name, logger in logging.Logger.manager.loggerDict.items():
        if isinstance(logger, logging.Logger) and name.split(".")[0] == "entrykit":
            logger.disabled = False


def snapshot() -> tuple[list[logging.Handler], int]:
    """The root logger's handlers and level, to restore after code that reconfigures logging."""
    root = logging.getLogger()
    return list(root.handlers), root.level
