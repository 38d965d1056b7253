"""Setting values from the environment, options or TOML, parsed; ValueError says what is wrong.

A raw value is a string (environment, command line) or a TOML value; each parser returns the
typed value or raises ValueError with a message fit to follow the setting's name.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path

from entrykit.errors import ConfigError

TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off"}


def is_port(text: str) -> bool:
    """``text`` is a port number, 1 to 65535, in ASCII digits (``int`` also takes "²"
    and 5,000 digits, which are no port)."""
    return text.isascii() and text.isdigit() and len(text) <= 5 and 0 < int(text) < 65536


def as_string(raw: object) -> str:
    """A string exactly as written (a TOML number as its text): for argv items and env values,
    where blanks and newlines are part of the value."""
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise ValueError(f"expected a string, got {type(raw).__name__}")
    return str(raw)


def as_text(raw: object) -> str:
    """A setting's text, surrounding blanks stripped."""
    return as_string(raw).strip()


def as_list(raw: object) -> tuple[str, ...]:
    if isinstance(raw, list | tuple):
        items = [as_text(item) for item in raw]
    else:
        items = as_text(raw).split(",")
    return tuple(item.strip() for item in items if item.strip())


def as_bool(raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    text = as_text(raw).lower()
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    raise ValueError("expected a boolean (1/0, true/false, yes/no, on/off)")


def choice(*choices: str, booleans: bool = False) -> Callable[[object], str]:
    def parse(raw: object) -> str:
        if booleans and (isinstance(raw, bool) or as_text(raw).lower() in TRUE | FALSE):
            return "1" if as_bool(raw) else "0"
        text = as_text(raw).lower()
        if text not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return text

    return parse


def _number(raw: object, problem: str) -> float:
    if isinstance(raw, bool):
        raise ValueError(problem)
    try:
        return float(raw) if isinstance(raw, int | float) else float(as_text(raw))
    except ValueError:
        raise ValueError(problem) from None


def as_seconds(raw: object) -> float:
    seconds = _number(raw, "expected a number of seconds")
    if not 0 <= seconds < float("inf"):  # also false for nan
        raise ValueError("expected a finite number of seconds, 0 or more")
    return seconds


def as_positive_seconds(raw: object) -> float:
    """A time limit: finite seconds above 0 (no limit is written by leaving it out)."""
    problem = "expected a finite number of seconds above 0"
    seconds = _number(raw, problem)
    if not 0 < seconds < float("inf"):  # also false for nan
        raise ValueError(problem)
    return seconds


def as_workers(raw: object) -> int:
    if isinstance(raw, bool):
        raise ValueError("expected a whole number from 1 to 64")
    try:
        count = raw if isinstance(raw, int) else int(as_text(raw))
    except ValueError:
        raise ValueError("expected a whole number from 1 to 64") from None
    if not 1 <= count <= 64:
        raise ValueError("expected a whole number from 1 to 64")
    return count


def as_path(raw: object) -> Path:
    text = as_text(raw)
    if not text:
        raise ValueError("expected a path")
    return Path(text)


def as_optional_path(raw: object) -> Path | None:
    return as_path(raw) if as_text(raw) else None


def as_paths(raw: object) -> tuple[Path, ...]:
    return tuple(Path(item) for item in as_list(raw))


def as_nonempty(raw: object) -> str:
    text = as_text(raw)
    if not text:
        raise ValueError("must not be empty")
    return text


def as_optional_text(raw: object) -> str | None:
    return as_text(raw) or None


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def join_url_pieces(pieces: Iterable[str]) -> tuple[str, ...]:
    """Undo the comma split inside one URL: a piece without ``scheme://`` continues the one
    before it (``mongodb://a:27017,b:27017/?replicaSet=rs``, multi-host PostgreSQL, a password
    with a comma)."""
    urls: list[str] = []
    for piece in pieces:
        if urls and not _SCHEME.match(piece.strip()):
            urls[-1] += "," + piece
        else:
            urls.append(piece)
    return tuple(urls)


def split_host_port(text: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port); raises ConfigError otherwise."""
    host, sep, port = text.strip().rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not is_port(port):
        raise ConfigError(f"{text!r} is not HOST:PORT")
    return host, int(port)


def as_host_ports(raw: object) -> tuple[str, ...]:
    targets = as_list(raw)
    for target in targets:
        try:
            split_host_port(target)
        except ConfigError as error:
            raise ValueError(str(error)) from None
    return targets


def as_http_urls(raw: object) -> tuple[str, ...]:
    urls = join_url_pieces(as_list(raw))  # a comma in a password does not split its URL
    for url in urls:
        if not re.match(r"^https?://[^/\s]+", url):
            raise ValueError(f"{url!r} is not an http:// or https:// URL")
    return urls
