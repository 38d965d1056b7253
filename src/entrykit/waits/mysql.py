"""Waiting for MySQL or MariaDB: a PyMySQL login that runs ``SELECT 1``.

The server's error numbers decide: access denied (1044, 1045, 1698), a host not allowed
(1130) and an unknown database (1049) are refused for good; everything else (refused or
lost connections 2003/2013, too many connections 1040, shutdown in progress 1053) may pass.
Each case is proven against a real MariaDB in the tests.
"""

from __future__ import annotations

from entrykit.database import DatabaseTarget, one_line, open_mysql_connection
from entrykit.errors import ConfigError
from entrykit.waits.check import Check, ErrorKind, raise_classified
from entrykit.waits.clients import require_client
from entrykit.waits.mysql_options import mysql_connect_options

_REFUSED_CODES = {
    1044,  # access denied to the database
    1045,  # access denied: wrong password or unknown user
    1049,  # unknown database
    1130,  # this host is not allowed to connect
    1698,  # access denied (MariaDB: an unknown user, or one that needs another plugin)
}


def classify_mysql_error(error: BaseException) -> ErrorKind:
    """Is a failed MySQL/MariaDB login worth retrying, refused for good, or a bad URL?
    Unknown errors are transient, as for PostgreSQL."""
    code = error.args[0] if error.args and isinstance(error.args[0], int) else None
    if code in _REFUSED_CODES:
        return "refused"
    return "transient"


def mysql_check(target: DatabaseTarget, label: str = "database") -> Check:
    """A login to the MySQL/MariaDB ``target`` running ``SELECT 1``.

    Raises ConfigError when PyMySQL (the ``mysql`` extra) is not installed, or for a URL
    option it does not know (see :mod:`entrykit.waits.mysql_options`).
    """
    require_client("pymysql", "mysql", target.url.partition("://")[0])
    address = target.mysql
    if address is None:  # parse_database_url sets it for every MySQL URL
        raise ConfigError(f"not a MySQL URL: {target.masked}")
    mysql_connect_options(target.url)  # an unknown option is a bad URL, before any waiting

    def attempt(timeout: float) -> None:
        try:
            # a server that accepts and never answers must not hold the try past its timeout
            with (
                open_mysql_connection(address, timeout, read_timeout=timeout) as conn,
                conn.cursor() as cursor,
            ):
                cursor.execute("SELECT 1")
        except Exception as error:
            raise_classified(
                classify_mysql_error(error),
                f"{label} {target.display}",
                target.masked,
                _reason(error),
            )

    return Check(f"{label} {target.display}", f"{label} {target.masked}", attempt)


def _reason(error: BaseException) -> str:
    if len(error.args) == 2 and isinstance(error.args[0], int):
        return f"({error.args[0]}) {one_line(Exception(error.args[1]))}"
    return one_line(error)
