"""The query options of a MySQL/MariaDB URL as PyMySQL's connect arguments: the TLS and
character-set options PyMySQL and SQLAlchemy's ``mysql+pymysql`` dialect both know. Any other
option is refused, as PostgreSQL, Redis and MongoDB URLs refuse theirs: silently ignoring
``?ssl_ca=...`` would wait for (and migrate over) a connection the user did not ask for."""

from __future__ import annotations

import os
from urllib.parse import parse_qsl, urlsplit

from entrykit.errors import ConfigError
from entrykit.logs import mask_url

_FILES = ("ssl_ca", "ssl_cert", "ssl_key")
_FLAGS = ("ssl_verify_cert", "ssl_verify_identity", "ssl_disabled")
_ALIASES = {"ssl_check_hostname": "ssl_verify_identity"}  # SQLAlchemy's spelling
_TEXTS = ("charset",)
# Known to the drivers but set by entrykit itself (timeouts) or read elsewhere (unix_socket).
_LEFT_OUT = ("unix_socket", "connect_timeout", "read_timeout", "write_timeout")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def mysql_connect_options(url: str) -> dict[str, str | bool]:
    """PyMySQL's connect arguments for the query of a MySQL/MariaDB ``url``.

    Raises ConfigError naming an unknown option, a flag that is not true/false, a TLS file
    that cannot be read, or an option given twice.
    """
    shown = mask_url(url)
    options: dict[str, str | bool] = {}
    for name, value in parse_qsl(urlsplit(url).query, keep_blank_values=True):
        key = _ALIASES.get(name, name)
        if key in options:
            raise ConfigError(f"invalid URL {shown!r}: option {name!r} given twice")
        if key in _LEFT_OUT:
            continue
        if key in _FILES:
            if not os.access(value, os.R_OK):
                raise ConfigError(f"invalid URL {shown!r}: {name} {value!r} cannot be read")
            options[key] = value
        elif key in _FLAGS:
            if value.lower() not in (*_TRUE, *_FALSE):
                raise ConfigError(f"invalid URL {shown!r}: {name} must be true or false")
            options[key] = value.lower() in _TRUE
        elif key == "charset":
            from pymysql.charset import charset_by_name

            if not value or charset_by_name(value) is None:  # else PyMySQL fails in its handshake
                raise ConfigError(f"invalid URL {shown!r}: unknown charset {value!r}")
            options[key] = value
        else:
            known = ", ".join(sorted((*_FILES, *_FLAGS, *_ALIASES, *_TEXTS, *_LEFT_OUT)))
            raise ConfigError(f"invalid URL {shown!r}: unknown option {name!r} (known: {known})")
    _load_tls_files(options, shown)
    return options


def _load_tls_files(options: dict[str, str | bool], shown: str) -> None:
    """Load the TLS files as PyMySQL will, so that one that is no certificate or key is a
    bad URL now rather than a failed connection retried to the deadline."""
    if not any(name in options for name in _FILES):
        return
    import ssl

    ca, cert, key = (str(options[name]) if name in options else None for name in _FILES)
    try:
        context = ssl.create_default_context(cafile=ca)
        if cert is not None:
            context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError, ValueError) as error:
        raise ConfigError(f"invalid URL {shown!r}: TLS files: {error}") from None
