"""Wait URLs as configured -> as used: pieces a comma list cut apart joined again,
``${VAR}`` expanded from the environment (secrets loaded), every password made a secret."""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import SplitResult, quote

from entrykit.errors import ConfigError
from entrykit.logs import mask_url
from entrykit.settings import split_host_port
from entrykit.values import is_port

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


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


def has_variables(value: object) -> bool:
    """Does a text, or a list of texts, hold a ``${VAR}``?"""
    texts = value if isinstance(value, list | tuple) else [value]
    return any(isinstance(text, str) and _VARIABLE.search(text) for text in texts)


def expand_targets(values: Mapping[str, object], environ: Mapping[str, str]) -> dict[str, object]:
    """``values`` (texts and lists of texts) with ``${VAR}`` expanded as :func:`expand_url`
    does (``entrykit wait``'s ``--db``, ``--tcp``, ``--http``). Raises ConfigError naming
    a VAR that is not set."""

    def expand(value: object) -> object:
        if isinstance(value, list | tuple):
            return [expand(item) for item in value]
        return expand_url(value, environ) if isinstance(value, str) else value

    return {name: expand(value) for name, value in values.items()}


def _userinfo_end(url: str) -> int:
    """Where the ``user:password@`` part of ``url`` ends (0 when there is none)."""
    _, sep, rest = url.partition("://")
    if not sep:
        return 0
    start = len(url) - len(rest)
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    at = authority.rfind("@")
    return start + at if at >= 0 else 0


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SPACE = re.compile(r"\s")
# a second URL after a blank or a new line: a list that should have been comma-separated
_SEVERAL_URLS = re.compile(r"\s+[A-Za-z][A-Za-z0-9+.-]*://")


def check_url_form(
    url: str, *, several_hosts: bool = False, local_path: bool = False, what: str = "URL"
) -> None:
    """Refuse, before any waiting, a URL no retry can cure: blank, holding control
    characters, whitespace in its host or path, a bad ``[IPv6]``, a port that is not 1 to
    65535, a host name DNS cannot carry (an empty label, one over 63 characters), or several
    hosts (``a:1,b:2``) where the scheme takes one. The user-info part is left to the
    scheme's client (a password may hold anything). A ``local_path`` (``file://``,
    ``unix://``) may hold spaces.

    Raises ConfigError naming the URL (password hidden) and the problem.
    """
    problem = _url_problem(url, several_hosts, local_path)
    if problem:
        shown = f"{mask_url(url)!r}" if url.strip() else "(empty)"
        raise ConfigError(f"invalid {what} {shown}: {problem}")


def check_host(host: str) -> str:
    """What is wrong with a host name or address (``""``: nothing); brackets removed. A host
    with ``:`` must be an IPv6 address (a zone id ``%lo``, or ``%25lo`` as a URL writes it,
    allowed); one with ``%`` and no ``:`` is a percent-encoded socket folder."""
    if not host:
        return "no host"
    if not host.isprintable():
        return "a host holds a control character"
    if _SPACE.search(host) or "," in host:
        return "a host holds whitespace or a comma"
    if "$" in host:  # ${VAR} is expanded before this; $VAR and ${} never are
        return "$ cannot be in a host name; write ${VAR}"
    if "://" in host:
        return "a host holds a scheme (expected HOST:PORT)"
    if ":" in host:
        return "" if is_ipv6(host) else "bad IPv6 address"
    if "%" in host:
        return ""
    try:
        host.encode("idna")
    except UnicodeError:
        return "a host is not a DNS name (an empty label, or one over 63 characters)"
    return ""


def is_ipv6(host: str) -> bool:
    """Is ``host`` an IPv6 address, with or without a zone id (``%lo`` or ``%25lo``)?"""
    import ipaddress

    try:
        ipaddress.IPv6Address(unquote_zone(host))
    except ValueError:
        return False
    return True


def unquote_zone(host: str) -> str:
    """``host`` as a socket takes it: an IPv6 zone id written ``%25lo`` in a URL made ``%lo``."""
    return host.replace("%25", "%", 1) if ":" in host else host


def url_host(parts: SplitResult) -> str:
    """The host of a split URL as a socket takes it (``""`` when none): an IPv6 address
    without brackets, its zone id decoded and in its own case (urlsplit lowers it)."""
    host = parts.hostname or ""
    if ":" not in host:
        return host
    bracketed = parts.netloc.rpartition("@")[2].partition("]")[0]
    return unquote_zone(bracketed.removeprefix("["))


def _url_problem(url: str, several_hosts: bool, local_path: bool) -> str:
    if not url.strip():
        return "empty URL"
    if _SEVERAL_URLS.search(url):
        return "several URLs: separate them with commas, not blanks or new lines"
    if _CONTROL.search(url):
        return "it holds a control character"
    scheme, sep, rest = url.partition("://")
    if not sep:
        return ""  # the caller names the missing scheme
    if local_path and re.search(r"[?#]", rest):
        return f"{scheme}:// takes no query or fragment: write ? as %3F and # as %23 in a path"
    authority, _, tail = rest.partition("/") if "/" in rest else (rest, "", "")
    authority = re.split(r"[?#]", authority, maxsplit=1)[0]
    path = re.split(r"[?#]", tail, maxsplit=1)[0]
    if _SPACE.search(path) and not local_path:
        return "whitespace in the path"
    hosts = authority.rpartition("@")[2]
    if not hosts:
        return ""  # no host: the scheme's default, or a socket named in the query
    items = hosts.split(",")
    if len(items) > 1 and not several_hosts:
        return f"{scheme}:// takes one host, not {len(items)}"
    for item in items:
        problem = _host_port_problem(item)
        if problem:
            return problem
    return ""


def _host_port_problem(item: str) -> str:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port``: what is wrong (``""``: nothing)."""
    if item.startswith("["):
        host, bracket, port_part = item[1:].partition("]")
        if not bracket or (port_part and not port_part.startswith(":")):
            return "bad IPv6 address (expected [ADDRESS]:PORT)"
        if not is_ipv6(host):
            return "bad IPv6 address"
        port = port_part[1:]
    else:
        if "]" in item:
            return "bad IPv6 address (expected [ADDRESS]:PORT)"
        host, _, port = item.partition(":")
        if ":" in port:
            return "an IPv6 address goes in brackets ([ADDRESS]:PORT)"
    if host:
        problem = check_host(host)
        if problem:
            return problem
    if port and not is_port(port):
        return "the port is not a number from 1 to 65535"
    return ""


def split_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[v6]:PORT`` -> (host, port), the host one DNS can carry.

    Raises ConfigError saying what is wrong.
    """
    host, port = split_host_port(address)
    problem = check_host(host)
    if problem:
        raise ConfigError(f"{address!r} is not HOST:PORT: {problem}")
    return host, port
