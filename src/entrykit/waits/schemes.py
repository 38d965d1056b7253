"""The scheme of a wait URL picks its check: one table, one entry per dependency kind."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from entrykit.errors import ConfigError
from entrykit.logs import mask_url
from entrykit.settings import MYSQL_SCHEMES, POSTGRES_SCHEMES
from entrykit.waits.amqp import amqp_check
from entrykit.waits.check import Check
from entrykit.waits.files import file_check, unix_check
from entrykit.waits.http import http_check
from entrykit.waits.mongodb import mongodb_check
from entrykit.waits.postgres import database_check
from entrykit.waits.redis import redis_check
from entrykit.waits.tcp import tcp_url_check
from entrykit.waits.urls import check_url_form

CHECKS: dict[str, Callable[[str], Check]] = {
    "redis": redis_check,
    "rediss": redis_check,
    "valkey": redis_check,
    "valkeys": redis_check,
    "amqp": amqp_check,
    "amqps": amqp_check,
    "mongodb": mongodb_check,
    "mongodb+srv": mongodb_check,
    "tcp": tcp_url_check,
    "http": http_check,
    "https": http_check,
    "file": file_check,
    "unix": unix_check,
}
DATABASE_LABELS = {
    **{scheme: "postgresql" for scheme in POSTGRES_SCHEMES},
    **{scheme: "mysql" for scheme in MYSQL_SCHEMES},
    "sqlite": "sqlite",
}
SCHEMES = (*DATABASE_LABELS, *CHECKS)


def check_for_url(url: str, *, cwd: Path | None = None) -> Check | None:
    """The check of a wait URL (None for SQLite: its folder is checked here, nothing to wait).

    Raises ConfigError for an unknown scheme, a bad URL or a client that is not installed.
    """
    scheme, sep, _ = url.partition("://")
    scheme = scheme.lower()
    if scheme != "sqlite":  # a SQLite URL is a path, checked by the database step
        check_url_form(
            url,
            several_hosts=scheme in (*POSTGRES_SCHEMES, "mongodb"),
            local_path=scheme in ("file", "unix"),
            what="wait URL",
        )
    if sep and scheme in DATABASE_LABELS:
        return database_check(url, cwd=cwd, label=DATABASE_LABELS[scheme])[1]
    if sep and scheme in CHECKS:
        return CHECKS[scheme](url)
    named = f"unknown scheme {scheme + '://'!r}" if sep else "no scheme"
    raise ConfigError(
        f"wait URL {mask_url(url)!r}: {named}; expected one of "
        + ", ".join(f"{known}://" for known in SCHEMES)
    )
