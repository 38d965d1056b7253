"""Waiting for MongoDB with pymongo: ``ping`` answered by a primary (or a mongos), after
authentication.

Refused for good: authentication failed (code 18). Anything else (no server selectable yet,
refused connections, timeouts, no primary elected yet, DNS of a ``mongodb+srv`` name not
there yet) may pass. A URL pymongo cannot parse is a configuration error.
"""

from __future__ import annotations

from typing import Any

from entrykit.errors import ConfigError
from entrykit.logs import mask_url
from entrykit.waits.check import Check, ErrorKind, host_port, raise_classified
from entrykit.waits.clients import require_client

_REFUSED_CODES = {18}  # AuthenticationFailed
# pymongo's server selection runs within one attempt; its own monitor retries every 0.5 s,
# so a selection may end up to that much after its timeout: it is given that much less.
_SELECTION_TIMEOUT = 2.0
_MONITOR_INTERVAL = 0.5
_SHORTEST_SELECTION = 0.2
_IO_SHARE_OF_SELECTION = 0.7


def classify_mongodb_error(error: BaseException) -> ErrorKind:
    """Is a failed ping worth retrying, refused for good, or a bad URL?"""
    from pymongo import errors

    if isinstance(error, errors.OperationFailure) and error.code in _REFUSED_CODES:
        return "refused"
    if isinstance(error, errors.InvalidURI):
        return "config"
    return "transient"


def mongodb_check(url: str) -> Check:
    """``ping`` on the primary of a ``mongodb://`` or ``mongodb+srv://`` URL.

    Raises ConfigError for a URL pymongo cannot parse or when pymongo (the ``mongodb``
    extra) is not installed.
    """
    scheme = url.partition("://")[0].lower()
    pymongo = require_client("pymongo", "mongodb", scheme)
    masked = mask_url(url)
    hosts = (
        _hosts(pymongo, url, masked)
        if scheme == "mongodb"
        else url.partition("://")[2].rpartition("@")[2]
    )
    what = f"mongodb {hosts.split('/')[0].split('?')[0]}"
    _check_options(pymongo, url, masked)

    def attempt(timeout: float) -> None:
        client: Any = None
        selection = max(_SHORTEST_SELECTION, min(timeout - _MONITOR_INTERVAL, _SELECTION_TIMEOUT))
        # the hello must time out before server selection gives up, or the reason a user
        # reads is pymongo's "No servers found yet" instead of "timed out"
        io_timeout_ms = int(selection * _IO_SHARE_OF_SELECTION * 1000)
        try:
            client = pymongo.MongoClient(
                url,
                serverSelectionTimeoutMS=int(selection * 1000),
                connectTimeoutMS=io_timeout_ms,
                socketTimeoutMS=io_timeout_ms,
                appname="entrykit",
            )
            client.admin.command("ping")
        except Exception as error:
            raise_classified(classify_mongodb_error(error), what, masked, _reason(error))
        finally:
            if client is not None:
                client.close()

    return Check(what, f"mongodb {masked}", attempt)


def _hosts(pymongo: Any, url: str, masked: str) -> str:
    """``host:port,...`` of a mongodb:// URL; raises ConfigError when it does not parse.
    (A mongodb+srv:// URL is not parsed here: that would ask DNS, which may not answer yet.)"""
    try:
        parsed = pymongo.uri_parser.parse_uri(url)
    except Exception as error:  # InvalidURI, ConfigurationError, an unreadable tlsCAFile
        raise ConfigError(f"invalid URL {masked!r}: {_reason(error)}") from None
    return ",".join(host_port(host, port) for host, port in parsed["nodelist"])


def _check_options(pymongo: Any, url: str, masked: str) -> None:
    """Build a client that does not connect (nor ask DNS): pymongo checks the URL's options
    (``tlsCAFile`` readable, ``authMechanism`` and its needs) when one is built, and no retry
    can cure what it refuses then. Raises ConfigError naming the problem."""
    try:
        pymongo.MongoClient(url, connect=False).close()
    except Exception as error:  # anything it refuses before connecting is the URL's fault
        raise ConfigError(f"invalid URL {masked!r}: {_reason(error)}") from None


def _reason(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    # a server selection timeout ends with a long topology description: keep the first part
    return text.split(", Timeout: ")[0].split(" (configured timeouts")[0].split("\n")[0]
