"""Waiting for MySQL/MariaDB (DATABASE_URL and mysql:// wait URLs), against real ``mariadbd``
processes: access denied (1044, 1045, 1698) and unknown database (1049) are exit 21 at once;
a server not started, started late or out of connections for the user is waited for."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator

import pymysql
import pytest
from servers import MariaDBServer
from test_wait import deadline_in, entrykit, later

from entrykit.errors import ConfigError, DatabaseRefused, DependencyNotReady
from entrykit.waits.postgres import wait_for_database
from entrykit.waits.schemes import check_for_url

pytestmark = pytest.mark.skipif(
    not MariaDBServer.available(), reason="mariadb-server not installed"
)


def refused_at_once(url: str, match: str) -> DatabaseRefused:
    started = time.monotonic()
    with pytest.raises(DatabaseRefused, match=match) as caught:
        wait_for_database(url, deadline_in(30))
    assert time.monotonic() - started < 3
    return caught.value


@pytest.fixture
def own_mariadb() -> Iterator[MariaDBServer]:
    server = MariaDBServer()
    try:
        yield server
    finally:
        server.close()


@pytest.mark.parametrize(
    "scheme",
    ["mysql", "mariadb", "mysql+pymysql", "mysql+mysqldb", "mysql+aiomysql", "mysql+asyncmy"],
)
def test_every_mysql_scheme_is_waited_on_with_pymysql(
    mariadb_server: MariaDBServer, scheme: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "entrykit.wait")
    target = wait_for_database(mariadb_server.url(scheme=scheme), deadline_in(10))
    assert target.kind == "mysql"
    assert target.sqlalchemy_url.startswith("mysql+pymysql://")
    assert f"database 127.0.0.1:{mariadb_server.port} ready after" in caplog.text
    assert mariadb_server.password not in caplog.text


def test_wait_url_names_mysql(mariadb_server: MariaDBServer) -> None:
    check = check_for_url(mariadb_server.url())
    assert check is not None and check.what == f"mysql 127.0.0.1:{mariadb_server.port}"
    check.attempt(5.0)


def test_wrong_password_is_refused_at_once(mariadb_server: MariaDBServer) -> None:
    error = refused_at_once(mariadb_server.url(password="wrong-secret"), r"\(1045\) Access denied")
    assert "wrong-secret" not in str(error)


def test_unknown_user_is_refused_at_once(mariadb_server: MariaDBServer) -> None:
    refused_at_once(mariadb_server.url(user="ghost", password="ghost-pw"), "Access denied")


def test_unknown_database_is_refused_at_once(mariadb_server: MariaDBServer) -> None:
    refused_at_once(mariadb_server.url(db="no_such_db"), r"\(1049\) Unknown database")


def test_database_the_user_may_not_use_is_refused_at_once(mariadb_server: MariaDBServer) -> None:
    mariadb_server.create_user("limited", "limited-pw", f"{mariadb_server.database}.*")
    other = mariadb_server.create_database()
    refused_at_once(
        mariadb_server.url(user="limited", password="limited-pw", db=other), r"\(1044\)"
    )


def test_user_out_of_connections_is_waited_for(
    mariadb_server: MariaDBServer, caplog: pytest.LogCaptureFixture
) -> None:
    mariadb_server.execute(
        "CREATE USER 'one_conn'@'%' IDENTIFIED BY 'one-conn-pw' WITH MAX_USER_CONNECTIONS 1;"
        f" GRANT ALL ON {mariadb_server.database}.* TO 'one_conn'@'%'"
    )
    held = pymysql.connect(
        host="127.0.0.1", port=mariadb_server.port, user="one_conn", password="one-conn-pw"
    )
    caplog.set_level(logging.INFO, "entrykit.wait")
    later(1.0, held.close)
    wait_for_database(mariadb_server.url(user="one_conn", password="one-conn-pw"), deadline_in(30))
    assert "max_user_connections" in caplog.text


def test_server_not_started_times_out(own_mariadb: MariaDBServer) -> None:
    with pytest.raises(DependencyNotReady, match="Connection refused") as caught:
        wait_for_database(own_mariadb.url(), deadline_in(1.0))
    assert own_mariadb.password not in str(caught.value)


def test_server_started_late_is_waited_for(
    own_mariadb: MariaDBServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "entrykit.wait")
    later(1.0, lambda: own_mariadb.start(wait=False))
    wait_for_database(own_mariadb.url(), deadline_in(60))
    assert "(2003)" in caplog.text and "ready after" in caplog.text


def test_bad_urls_are_config_errors() -> None:
    for url in ("mysql://u:secret-pw@db:notaport/app", "mysql://u:secret-pw@/app"):
        with pytest.raises(ConfigError) as caught:
            wait_for_database(url, deadline_in(1))
        assert "secret-pw" not in str(caught.value)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["ready", "wrong password", "unknown database"])
def test_cli_exit_codes(mariadb_server: MariaDBServer, case: str) -> None:
    url = {
        "ready": mariadb_server.url(),
        "wrong password": mariadb_server.url(password="wrong-pass-123"),
        "unknown database": mariadb_server.url(db="nothing_here"),
    }[case]
    result = entrykit("wait", "--db", url, "--timeout", "5")
    assert result.returncode == (0 if case == "ready" else 21), result.stderr
    result = entrykit("wait", url, "--timeout", "5")
    assert result.returncode == (0 if case == "ready" else 21), result.stderr
    assert "wrong-pass-123" not in result.stderr
    assert mariadb_server.password not in result.stderr


@pytest.mark.parametrize("password", ["pässwörd1", "pw€uro-secret"])
def test_a_non_ascii_password_logs_in(mariadb_server: MariaDBServer, password: str) -> None:
    """The server hashes the password's UTF-8 bytes (what the mysql client sends); PyMySQL
    on its own would send latin-1 ('ä': access denied, '€': an encoding error, retried)."""
    user = f"uni_{abs(hash(password)) % 10**6}"
    # the hash, not the text: the mysql client's own charset cannot change the password
    digest = hashlib.sha1(hashlib.sha1(password.encode()).digest()).hexdigest().upper()
    mariadb_server.execute(
        f"CREATE USER IF NOT EXISTS '{user}'@'%' IDENTIFIED BY PASSWORD '*{digest}';"
        f" GRANT ALL ON {mariadb_server.database}.* TO '{user}'@'%'"
    )
    url = mariadb_server.url(user=user, password=password)
    result = entrykit("wait", url, "--timeout", "10")
    assert result.returncode == 0, result.stderr
    assert password not in result.stderr
    result = entrykit("wait", "--db", url, "--timeout", "10")
    assert result.returncode == 0, result.stderr
    wrong = mariadb_server.url(user=user, password=password.replace("ä", "a").replace("€", "E"))
    refused_at_once(wrong, r"\(1045\) Access denied")


def test_a_refused_wait_url_is_named_mysql(mariadb_server: MariaDBServer) -> None:
    check = check_for_url(mariadb_server.url(password="wrong-secret"))
    assert check is not None
    with pytest.raises(DatabaseRefused, match=f"^mysql 127.0.0.1:{mariadb_server.port} refused"):
        check.attempt(5.0)
