"""Waiting for a file (``file:///PATH``: it exists) or a Unix socket (``unix:///PATH``: a
connection opens), e.g. a socket another container shares through a volume."""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path
from urllib.parse import unquote, urlsplit

from entrykit.errors import ConfigError
from entrykit.logs import mask_url
from entrykit.waits.check import Check
from entrykit.waits.retry import NotReadyYet

_SOCKET_PATH_MAX = 108  # sun_path on Linux; Python needs no room for a final NUL


def _local_path(url: str) -> Path:
    parts = urlsplit(url)
    path = unquote(parts.path)
    if parts.netloc not in ("", "localhost") or not path.startswith("/"):
        raise ConfigError(
            f"invalid URL {mask_url(url)!r}: expected {parts.scheme}:///ABSOLUTE/PATH"
        )
    if not path.isprintable():  # %00 can never be in a path; %0A would break log lines
        raise ConfigError(f"invalid URL {mask_url(url)!r}: the path holds a control character")
    return Path(path)


def file_check(url: str) -> Check:
    """Ready when the path of ``file:///PATH`` exists; raises ConfigError for other forms."""
    path = _local_path(url)

    def attempt(timeout: float) -> None:
        try:
            os.stat(path)
        except OSError as error:
            # too long a name never exists; a folder we may not search yet may become
            # searchable (a volume prepared by another container), so that one is retried
            reason = f"{path}: {(error.strerror or type(error).__name__).lower()}"
            if error.errno == errno.ENAMETOOLONG:
                raise ConfigError(f"invalid URL {mask_url(url)!r}: file name too long") from None
            raise NotReadyYet(
                f"{path} does not exist" if error.errno == errno.ENOENT else reason
            ) from None

    return Check(f"file {path}", f"file {path}", attempt)


def unix_check(url: str) -> Check:
    """Ready when a connection to the socket of ``unix:///PATH`` opens; raises ConfigError
    for other forms."""
    path = _local_path(url)
    if len(os.fsencode(path)) > _SOCKET_PATH_MAX:  # the kernel's sockaddr_un cannot hold it
        raise ConfigError(
            f"invalid URL {mask_url(url)!r}: a socket path is at most {_SOCKET_PATH_MAX} "
            f"bytes, this one is {len(os.fsencode(path))}"
        )

    def attempt(timeout: float) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            try:
                sock.connect(str(path))
            except OSError as error:
                raise NotReadyYet(error.strerror or str(error) or type(error).__name__) from None

    return Check(f"unix {path}", f"unix {path}", attempt)
