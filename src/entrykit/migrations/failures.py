"""What a failed migration says: the error's whole message and the revision that raised it."""

from __future__ import annotations

import contextlib
import os
import traceback
from collections.abc import Callable

from entrykit.logs import CONTINUATION_INDENT


def whole_message(error: BaseException) -> str:
    """``error``'s full text, its continuation lines indented under the first.

    A pydantic ValidationError from an env.py's settings names the field only on its second
    line; keeping every line (redaction happens when the line is written) keeps what the
    ``alembic`` command would show.
    """
    lines = [line.rstrip() for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return "\n".join([lines[0], *(CONTINUATION_INDENT + line for line in lines[1:])])


def described_error(error: BaseException) -> str:
    """``Type: whole message``, as a traceback's last line would say it."""
    return f"{type(error).__name__}: {whole_message(error)}"


def failed_revision(
    error: BaseException, revision_files: dict[str, str], fallback: Callable[[], str]
) -> str:
    """The revision whose file raised ``error`` (its deepest frame, causes included), else
    ``fallback()``. ``revision_files`` maps a revision's file path to its description."""
    files = {}
    for path, described in revision_files.items():
        with contextlib.suppress(OSError):
            files[os.path.realpath(path)] = described
    found = None
    cause: BaseException | None = error
    while cause is not None and found is None:
        for frame, _ in traceback.walk_tb(cause.__traceback__):
            hit = files.get(os.path.realpath(frame.f_code.co_filename))
            if hit is not None:
                found = hit
        cause = cause.__cause__ or cause.__context__
    return found if found is not None else fallback()
