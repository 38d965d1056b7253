"""Logging on stderr, as text or JSON lines, with every secret replaced by ``***``.

Redaction happens on the finished line (message, arguments and traceback together), so a
secret cannot slip out through a ``%r`` or an exception's text. Its cost is linear in the
length of the text: one C-speed ``str.find`` scan per registered form, and URL patterns that
never backtrack over more than one URL.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import TextIO

from entrykit.errors import EntrykitError, Stopped

MASK = "***"
CONTINUATION_INDENT = "    "  # a record's later lines: never a log line of their own
MIN_SECRET_LENGTH = 4  # shorter values would mask ordinary words ("on", "1")
_HELD_MOST = 1 << 20  # characters of an unended line redacted_stdio holds before writing

# user:password@ right after a "scheme://" -> the password's span. The password runs to the
# last "@" before a blank, a quote or the next "//" (so a raw "@" or "/" inside it is hidden
# too, and each URL is scanned once). "host:8080/path@x" cannot be told from the password
# "8080/path": it is hidden too, as "user:0000/@host" must be.
_USERINFO_PASSWORD = re.compile(r"[^:/@\s'\"]*:(?P<password>[^\s'\"/]*(?:/(?!/)[^\s'\"/]*)*)@")
_SCHEME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+.-")
# password=... (also sslpassword=, passwd=) in a URL query or a libpq conninfo string: the
# value up to "&" or a blank (maybe empty: a URL's value may start with a raw "#"). Spelled
# as character classes, not (?i), so that the regex engine skips to candidate positions
# instead of trying each one.
_QUERY_PASSWORD = re.compile(r"[Pp][Aa][Ss][Ss][Ww](?:[Oo][Rr])?[Dd]=(?P<password>[^&\s'\"#]*)")
_WORD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
# Where a parser may cut a password that holds them raw; its pieces are secrets too.
_URL_DELIMITERS = re.compile(r"[/@:?#&]")

_forms: tuple[str, ...] = ()  # every registered form; replaced whole, so readers need no lock
_forms_lock = threading.Lock()

_STEP_OF_LIBRARY = {"alembic": "migrate", "sqlalchemy": "migrate", "huggingface_hub": "prefetch"}


def add_secret(value: str) -> None:
    """Hide ``value`` in everything entrykit writes from now on, in every form a message may
    quote it in: as is, URL-encoded, escaped as by ``repr``, JSON, libpq conninfo and SQL.

    Each line of a value of several lines (a PEM key) is a secret of its own too: output is
    logged line by line, so the whole value never shows in one piece (GitHub Actions masks
    multi-line secrets the same way).
    """
    forms = _quoted_forms(value)
    # Each line as printed, or escaped within a line of its own (lines ended by "\r\n" too:
    # splitlines leaves no "\r"); its URL-encoded forms would cost a scan each for every
    # line logged, and a whole encoded value is one line, hidden as such.
    for line in value.splitlines():
        forms += [line, repr(line)[1:-1], _json_escaped(line)]
    _register(forms)


def add_url_secrets(url: str) -> None:
    """Hide every password in ``url`` from now on, in every form.

    Covers the user-info password (even with a raw ``/``, ``@``, ``?`` or ``#`` in it) and
    ``password=`` / ``sslpassword=`` in the query; each as written, percent-decoded, and in
    the pieces a parser that splits it at a raw delimiter would show.
    """
    forms: list[str] = []
    for written in _url_passwords(url):
        from urllib.parse import unquote, unquote_plus

        for password in dict.fromkeys((written, unquote(written), unquote_plus(written))):
            forms += _quoted_forms(password)
        # A parser cuts a password only at a delimiter written raw in the URL (libpq showed
        # "invalid port 'hunter2'"); an encoded one (%2F) is no cut, so its pieces are no
        # secret of their own (nor ordinary words that happen to be in them).
        for piece in _URL_DELIMITERS.split(written):
            forms += _quoted_forms(piece)
    _register(forms)


def add_url_secrets_in(words: Iterable[str]) -> None:
    """:func:`add_url_secrets` for each word that holds a URL (a command's arguments, which
    are logged with the command)."""
    for word in words:
        if "://" in word:
            add_url_secrets(word)


def redact(text: str) -> str:
    """``text`` with every known secret and every URL password replaced by ``***``.

    Overlapping or adjacent secrets are hidden as one ``***``; time is linear in ``len(text)``.
    """
    spans = _secret_spans(text, _forms) + _url_password_spans(text) + _query_password_spans(text)
    if not spans:
        return text
    parts: list[str] = []
    shown_from = 0
    for start, end in _merged(spans):
        parts += [text[shown_from:start], MASK]
        shown_from = end
    parts.append(text[shown_from:])
    return "".join(parts)


def longest_secret() -> int:
    """The length of the longest registered form of a secret; 0 when none is registered."""
    return max(map(len, _forms), default=0)


def secret_spans(text: str) -> list[tuple[int, int]]:
    """Where registered secrets (in each registered form) occur in ``text``: sorted spans,
    joined where they overlap or touch; linear in ``len(text)``, as :func:`redact` is.
    URL passwords found by pattern alone (never registered) are not among them."""
    return _merged(_secret_spans(text, _forms))


def mask_url(url: str) -> str:
    """A URL fit for output: its password (if any) shown as ``***``."""
    return redact(url)


def _register(forms: Iterable[str]) -> None:
    global _forms
    new = {form for form in forms if len(form) >= MIN_SECRET_LENGTH}
    with _forms_lock:
        if not new.issubset(_forms):
            _forms = tuple(sorted(new.union(_forms)))


def _url_password_spans(text: str) -> list[tuple[int, int]]:
    """Where ``scheme://user:PASSWORD@`` passwords are: each "://" found by ``str.find``,
    the user-info matched from there (never a scan from every position)."""
    spans: list[tuple[int, int]] = []
    at = text.find("://")
    while at >= 0:
        if at > 0 and text[at - 1] in _SCHEME_CHARS:
            match = _USERINFO_PASSWORD.match(text, at + 3)
            if match is not None:
                spans.append(match.span("password"))
        at = text.find("://", at + 3)
    return spans


def _query_password_spans(text: str) -> list[tuple[int, int]]:
    """Where ``password=VALUE`` values are, the key starting a word (``sslpassword`` too)."""
    return [match.span("password") for match in _query_passwords(text) if match["password"]]


def _query_passwords(text: str) -> Iterator[re.Match[str]]:
    """The ``password=`` matches whose key starts a word (``sslpassword`` too)."""
    for match in _QUERY_PASSWORD.finditer(text):
        key_start = match.start()
        if text[max(key_start - 3, 0) : key_start].lower() == "ssl":
            key_start -= 3
        if key_start == 0 or text[key_start - 1] not in _WORD_CHARS:
            yield match


def _quoted_forms(value: str) -> list[str]:
    """``value`` and the escaped forms in which messages quote it."""
    from urllib.parse import quote, quote_plus

    libpq = value.replace("\\", "\\\\").replace("'", "\\'")
    escaped = (repr(value)[1:-1], _json_escaped(value), libpq)
    # SQL quoting doubles "'"; SQLAlchemy's "[SQL: ...]" of a failed statement doubles "%"
    sql = value.replace("'", "''")
    doubled = (sql, value.replace("%", "%%"), sql.replace("%", "%%"))
    # a command line shown as a shell would take it (shlex.quote) breaks a "'" as '"'"'
    shell = value.replace("'", "'\"'\"'")
    # URL-encoded as we, urllib's default, quote_plus and SQLAlchemy's URL rendering do it
    encoded = (quote(value, safe=""), quote(value), quote_plus(value, safe=""), quote(value, " +"))
    return [value, *encoded, *escaped, *doubled, shell]


def _json_escaped(value: str) -> str:
    """``value`` as a JSON string holds it, without the quotes."""
    import json

    return json.dumps(value)[1:-1]


def _url_passwords(url: str) -> list[str]:
    """Every password ``url`` holds, as written: user-info and query parameters, each read
    as a URL parser and as a careless writer would (a raw "@", "/", "#" or blank inside)."""
    _, sep, rest = url.strip().partition("://")
    if not sep:
        return []
    passwords: list[str] = []
    for match in _query_passwords(rest):
        # and up to "&" or the end: libpq reads "?password=ab#cd ef" as "ab#cd ef"
        greedy = rest[match.start("password") : _find_or_end(rest, "&", match.start())]
        passwords += [match["password"], greedy, greedy.strip()]
    authority_end = min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))
    at = rest.rfind("@", 0, authority_end)
    if at < 0:  # no "@" before the path: the password may hold a raw "/", "?" or "#"
        at = rest.rfind("@")
    # and up to the last "@" before the query: libpq read "u:P@ss/2024@host" as the password
    # "P" at the host "ss", so "ss" and "2024" are pieces of the password to hide
    greedy_at = rest.rfind("@", 0, _find_or_end(rest, "?"))
    for userinfo_end in dict.fromkeys((at, greedy_at)):
        _, colon, password = rest[: max(userinfo_end, 0)].partition(":")
        if colon:  # "host:8080/path@x" too: it cannot be told from the password "8080/path"
            passwords.append(password)
    return passwords


def _find_or_end(text: str, sub: str, start: int = 0) -> int:
    """Where ``sub`` first occurs in ``text`` from ``start``; ``len(text)`` if nowhere."""
    found = text.find(sub, start)
    return found if found >= 0 else len(text)


def _secret_spans(text: str, forms: tuple[str, ...]) -> list[tuple[int, int]]:
    """Where each form occurs in ``text``, overlapping occurrences joined into one span."""
    spans: list[tuple[int, int]] = []
    for form in forms:
        size = len(form)
        found = text.find(form)
        while found >= 0:
            start, end = found, found + size
            # Jump to the last occurrence starting inside the span ("aaaa" in "aaaaaaa"),
            # rather than visiting each: a run of them costs len(run) / len(form) steps.
            while (last := text.rfind(form, start + 1, end - 1 + size)) >= 0:
                start, end = last, last + size
            spans.append((found, end))
            found = text.find(form, end)
    return spans


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Spans sorted and joined where they overlap or touch."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


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
    """``2026-11-22T05:00:00.123Z INFO  wait     database db:5432 ready after 1.31 s``.

    A record that spans several lines (a traceback, an error's detail, a newline in what a
    server or a user sent) has its continuation lines indented: no line of it can pass for a
    log line of its own.
    """

    def format(self, record: logging.LogRecord) -> str:
        line = (
            f"{_timestamp(record.created)} {record.levelname:<5} "
            f"{step_of(record.name):<8} {record.getMessage()}"
        )
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return _continued(redact(line))  # redacted first: a secret may span lines


def _continued(text: str) -> str:
    """``text`` on one line, or its later lines each starting with whitespace."""
    first, *rest = text.splitlines() or [""]
    if not rest and len(first) == len(text):
        return text
    return "\n".join(
        [
            first,
            *(
                line if not line or line[0].isspace() else CONTINUATION_INDENT + line
                for line in rest
            ),
        ]
    )


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

    def handleError(self, record: logging.LogRecord) -> None:
        """A line that could not be formatted or written: never the default report, which
        prints the record's arguments (secrets) raw; a stop signal that arrived meanwhile
        is not swallowed."""
        error = sys.exc_info()[1]
        if isinstance(error, Stopped):
            raise error
        with contextlib.suppress(Exception):
            self.stream.write(f"entrykit: a log line was lost: {type(error).__name__}\n")


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    """An exception no one caught in a thread: one redacted report, not a raw traceback."""
    if args.exc_type is SystemExit or args.exc_value is None:
        return
    name = args.thread.name if args.thread is not None else "?"
    exc_info = (args.exc_type, args.exc_value, args.exc_traceback)
    logging.getLogger("entrykit").error("internal error in thread %s", name, exc_info=exc_info)


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
    threading.excepthook = _log_thread_exception


@contextlib.contextmanager
def redacted_stdio() -> Iterator[None]:
    """While inside, ``print()`` and every write to ``sys.stdout`` / ``sys.stderr`` from code
    run in this process (a project's env.py, its migrations) are redacted line by line.

    Log records are not redacted twice: the log handler writes to the stream it was given
    at :func:`configure`. Writes straight to the file descriptor are not covered. Raises
    nothing of its own.
    """
    saved = sys.stdout, sys.stderr
    wrapped = _RedactingStream(saved[0]), _RedactingStream(saved[1])
    sys.stdout, sys.stderr = wrapped
    try:
        yield
    finally:
        for stream in wrapped:
            with contextlib.suppress(Exception):  # a closed or broken stream: nothing to do
                stream.write_held()
        # Only ours are put back: code that swapped them meanwhile keeps its own
        if sys.stdout is wrapped[0]:
            sys.stdout = saved[0]
        if sys.stderr is wrapped[1]:
            sys.stderr = saved[1]


class _RedactingStream(io.TextIOBase):
    """A text stream writing whole lines, redacted, to ``original``; a line's start is held
    until its end ("\n", or the "\r" of a progress bar) is written, so a secret written in
    pieces is still found; or until ``_HELD_MOST`` characters, for output that never ends a
    line. Threads may share it (a progress bar beside a migration)."""

    def __init__(self, original: TextIO) -> None:
        super().__init__()
        self._original = original
        self._held: list[str] = []
        self._held_size = 0
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        line_end = max(text.rfind("\n"), text.rfind("\r")) + 1
        with self._lock:
            self._held.append(text[:line_end] if line_end else text)
            self._held_size += line_end or len(text)
            if line_end or self._held_size > _HELD_MOST:
                self._write_held()
            if line_end and line_end < len(text):
                self._held, self._held_size = [text[line_end:]], len(text) - line_end
        return len(text)

    def write_held(self) -> None:
        """Write what is held (redacted), even if it does not end a line."""
        with self._lock:
            self._write_held()

    def _write_held(self) -> None:
        held = "".join(self._held)
        self._held, self._held_size = [], 0
        if held:
            self._original.write(redact(held))

    def flush(self) -> None:
        if not self._original.closed:  # (close() at garbage collection flushes too)
            self._original.flush()  # a line's start stays held: it may hold part of a secret

    def fileno(self) -> int:
        return self._original.fileno()

    def isatty(self) -> bool:
        return self._original.isatty()

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._original.encoding

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return self._original.errors


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
