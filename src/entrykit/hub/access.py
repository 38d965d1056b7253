"""Where the Hub and the cache are, and the token: what huggingface_hub itself would use."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from entrykit.errors import ConfigError

_HOST = re.compile(r"[A-Za-z0-9._-]+|[0-9A-Fa-f:.]+")  # a name, an IPv4 or IPv6 address


@dataclass(frozen=True)
class HubAccess:
    """The Hub's endpoint, the cache folder, the token and offline mode."""

    endpoint: str
    cache_dir: Path
    token: str | None = None
    offline: bool = False

    @classmethod
    def from_environment(cls, cache_dir: Path | None = None) -> HubAccess:
        """``HF_ENDPOINT``, ``HF_HUB_CACHE`` / ``HF_HOME``, ``HF_HUB_OFFLINE`` as huggingface_hub
        reads them, and the token from ``HF_TOKEN`` or the token file of ``hf auth login``;
        ``cache_dir`` (``--cache-dir``) wins over the environment.

        Raises ConfigError when ``HF_ENDPOINT`` is not an http(s) URL.
        """
        # Checked before huggingface_hub is imported: its constants module parses the URL
        # at import (a ValueError for "https://[::1") and strips the "/" that shows the value.
        given = os.environ.get("HF_ENDPOINT")
        endpoint = checked_endpoint(given) if given is not None else None
        from huggingface_hub import constants

        source = "HF_TOKEN (env)"
        token = os.environ.get("HF_TOKEN")
        if not token:
            source, token = "HUGGING_FACE_HUB_TOKEN (env)", os.environ.get("HUGGING_FACE_HUB_TOKEN")
        if not token:
            source = f"the token file {constants.HF_TOKEN_PATH}"
            try:
                token = Path(constants.HF_TOKEN_PATH).read_text()
            except (OSError, UnicodeDecodeError):
                token = None
        return cls(
            endpoint=endpoint or checked_endpoint(constants.ENDPOINT),
            cache_dir=cache_dir or Path(os.path.expanduser(constants.HF_HUB_CACHE)),
            token=checked_token(token, source),
            offline=constants.is_offline_mode(),
        )


def checked_token(token: str | None, source: str) -> str | None:
    """``token`` as huggingface_hub's ``_clean_token`` leaves it (every CR and LF removed,
    blanks stripped; nothing left: no token), registered for redaction as read and as
    cleaned. Raises ConfigError, never showing the token, when what is left still cannot be
    sent in an HTTP header (a control character, a character outside ASCII)."""
    from entrykit.logs import add_secret

    if token is None:
        return None
    add_secret(token)
    cleaned = token.replace("\r", "").replace("\n", "").strip()
    if not cleaned:
        return None
    add_secret(cleaned)
    if not all(" " <= char <= "~" for char in cleaned):
        raise ConfigError(
            f"{source}: the Hub token holds a control character or a character outside ASCII, "
            "so it cannot be sent; give the token exactly as the Hub shows it (hf_...)"
        )
    return cleaned


def checked_endpoint(endpoint: str) -> str:
    """``endpoint`` without a trailing ``/``; ConfigError when it is not an http(s) URL of a
    host (no blank, no query, no fragment: each would change every URL built on it)."""
    problem = _endpoint_problem(endpoint.strip())
    if problem:
        raise ConfigError(
            f"HF_ENDPOINT (env): {endpoint!r} is not an http(s) URL such as "
            f"https://huggingface.co ({problem})"
        )
    return endpoint.strip().rstrip("/")


def _endpoint_problem(endpoint: str) -> str | None:
    """Why ``endpoint`` cannot be the Hub's URL, or None."""
    try:
        parts = urlsplit(endpoint)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as error:
        return str(error)
    if parts.scheme not in ("http", "https"):
        return "the scheme must be http or https"
    if not parts.hostname:
        return "no host"
    if any(char.isspace() for char in endpoint) or not _HOST.fullmatch(parts.hostname):
        return "the host holds a blank or a character no host name has"
    if parts.query or parts.fragment or "?" in endpoint or "#" in endpoint:
        return "a query or fragment would end every path built on it"
    return None


def user_agent() -> str:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    def known(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "unknown"

    return (
        f"entrykit/{known('entrykit')}; hf_hub/{known('huggingface_hub')}; "
        f"python/{platform.python_version()}"
    )
