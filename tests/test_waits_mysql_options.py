"""MySQL/MariaDB URL options: those PyMySQL and SQLAlchemy both know are accepted, any other
is exit 10 before waiting (as PostgreSQL, Redis and MongoDB options are), against a real
``mariadbd``."""

from __future__ import annotations

import time

import pytest
from entrykit_process import clean_env, run_entrykit
from servers import MariaDBServer

from entrykit.errors import ConfigError
from entrykit.waits.mysql_options import mysql_connect_options

pytestmark = pytest.mark.skipif(
    not MariaDBServer.available(), reason="mariadb-server not installed"
)


def wait(url: str, timeout: str = "30") -> tuple[int, str, float]:
    started = time.monotonic()
    result = run_entrykit(["wait", url, "--timeout", timeout], clean_env(), timeout=60)
    return result.returncode, result.stderr, time.monotonic() - started


@pytest.mark.parametrize(
    ("query", "said"),
    [
        ("ssl_ca=/nonexistent/ca.pem", "ssl_ca '/nonexistent/ca.pem' cannot be read"),
        ("bogus=1", "unknown option 'bogus'"),
        ("ssl_verify_cert=maybe", "ssl_verify_cert must be true or false"),
        ("charset=utf8mb4&charset=latin1", "given twice"),
        ("ssl_ca=/etc/hostname", "TLS files"),  # readable, but no certificate
    ],
)
def test_an_option_the_wait_cannot_honour_is_exit_10_at_once(
    mariadb_server: MariaDBServer, query: str, said: str
) -> None:
    code, stderr, seconds = wait(f"{mariadb_server.url()}?{query}")
    assert code == 10, stderr
    assert said in stderr and mariadb_server.password not in stderr
    assert seconds < 10


def test_known_options_are_accepted(mariadb_server: MariaDBServer) -> None:
    query = "charset=utf8mb4&ssl_disabled=true&connect_timeout=10"
    code, stderr, _ = wait(f"{mariadb_server.url()}?{query}")
    assert code == 0, stderr


def test_options_become_pymysql_arguments() -> None:
    certifi = pytest.importorskip("certifi")  # a real CA bundle (requests brings it)
    ca = certifi.where()
    url = f"mysql://u@h/db?ssl_ca={ca}&ssl_check_hostname=false&ssl_verify_cert=1&charset=utf8mb4"
    assert mysql_connect_options(url) == {
        "ssl_ca": ca,
        "ssl_verify_identity": False,
        "ssl_verify_cert": True,
        "charset": "utf8mb4",
    }
    with pytest.raises(ConfigError, match="unknown option 'init_command'"):
        mysql_connect_options("mysql://u@h/db?init_command=DROP+TABLE+x")


def test_the_options_reach_the_connection_waits_and_migrations_share(
    mariadb_server: MariaDBServer,
) -> None:
    """``charset`` is seen by the server: the options are honoured, not only checked."""
    from entrykit.database import MysqlAddress, open_mysql_connection, parse_database_url

    if "options" not in MysqlAddress._fields:
        pytest.skip("database.MysqlAddress does not carry the URL's options yet")
    for charset in ("latin1", "utf8mb4"):
        address = parse_database_url(f"{mariadb_server.url()}?charset={charset}").mysql
        assert address is not None
        with open_mysql_connection(address) as conn, conn.cursor() as cursor:
            cursor.execute("SELECT @@character_set_client")
            assert cursor.fetchone() == (charset,)
