"""Wait URLs as configured -> as used: pieces a comma list cut apart joined again,
``${VAR}`` expanded from the environment (secrets loaded), every password made a secret."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from urllib.parse import quote

from entrykit.errors import ConfigError
from entrykit.logs import mask_url

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def join_url_pieces(pieces: Iterable[str]) -> tuple[str, ...]:
    """Undo the comma split inside one URL: a piece without ``scheme://`` continues the one
    before it (``mongodb://a:27017,b:27017/?replicaSet=rs``, multi-host PostgreSQL)."""
    urls: list[str] = []
    for piece in pieces:
        if urls and not _SCHEME.match(piece):
            urls[-1] += "," + piece
        else:
            urls.append(piece)
    return tuple(urls)


def expand_url(template: str, environ: Mapping[str, str]) -> str:
    """``template`` with every ``${VAR}`` replaced by its value: percent-encoded in the user
    and password part (a password may hold ``@``, ``/``, ``#``), as it is elsewhere.

    Raises ConfigError naming a VAR that is not set.
    """
    userinfo_end = _userinfo_end(template)

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in environ:
            # named without its ${}: the template's password part is itself hidden as a secret
            raise ConfigError(f"wait URL {mask_url(template)!r}: variable {name} is not set")
        if match.start() < userinfo_end:
            return quote(environ[name], safe="")
        return environ[name]

    return _VARIABLE.sub(value, template)


def _userinfo_end(url: str) -> int:
    """Where the ``user:password@`` part of ``url`` ends (0 when there is none)."""
    _, sep, rest = url.partition("://")
    if not sep:
        return 0
    start = len(url) - len(rest)
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    at = authority.rfind("@")
    return start + at if at >= 0 else 0
