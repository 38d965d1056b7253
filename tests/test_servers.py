"""The throwaway servers of ``servers.py`` accept the configured login and refuse a wrong one,
checked with the vendor CLIs (and, for RabbitMQ, a raw AMQP handshake too)."""

from __future__ import annotations

import os
import time
from urllib.parse import unquote, urlsplit

import pytest
from servers import AMQPRefused, MariaDBServer, RabbitMQServer, RedisServer, require


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie still answers kill(0); it runs nothing.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] == "Z"


def test_redis_accepts_its_passwords_and_refuses_a_wrong_one(redis_server: RedisServer) -> None:
    assert redis_server.cli("PING").stdout.strip() == "PONG"
    assert redis_server.cli("PING", user=redis_server.user).stdout.strip() == "PONG"
    wrong = redis_server.cli("PING", password="wrong")
    assert "WRONGPASS" in wrong.stdout + wrong.stderr
    assert "PONG" not in wrong.stdout
    no_password = redis_server.cli("PING", password="")
    assert no_password.stdout.startswith("NOAUTH")

    url = urlsplit(redis_server.url())
    assert (url.scheme, url.hostname, url.port, url.path) == (
        "redis",
        "127.0.0.1",
        redis_server.port,
        "/0",
    )
    assert (url.username, unquote(url.password or "")) == ("", redis_server.password)
    acl = urlsplit(redis_server.url(user="app"))
    assert (acl.username, unquote(acl.password or "")) == ("app", redis_server.user_password)


def test_redis_started_late_loading_then_ready() -> None:
    require(RedisServer)
    with RedisServer() as server:
        server.start(wait=False)
        server.wait_ready(10)
        server.populate(1000)
        started = time.monotonic()
        server.restart(wait=False, load_seconds=1.0)
        answers = set()
        while (answer := server.ping()) != "PONG":
            answers.add(answer.split()[0] if answer else "")
            assert time.monotonic() - started < 30
            time.sleep(0.02)
        assert "LOADING" in answers
        assert time.monotonic() - started >= 1.0
        pid = server.process.pid if server.process else 0
    assert _gone(pid)


def test_mariadb_accepts_its_login_and_refuses_a_wrong_one(mariadb_server: MariaDBServer) -> None:
    ok = mariadb_server.mysql("--batch", "--skip-column-names", "-e", "SELECT CURRENT_USER()")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == f"{mariadb_server.user}@%"
    wrong = mariadb_server.login(password="wrong")
    assert wrong.returncode != 0
    assert "ERROR 1045" in wrong.stderr
    assert "ERROR 1049" in mariadb_server.login(database="no_such_db").stderr
    root = mariadb_server.login(user="root", password="")  # root: the Unix socket only
    assert root.returncode != 0
    # 1698 (unix_socket only) or 1130 (no account for this host) on a fresh server; 1045 once
    # other tests have added accounts for any host (a password login is then tried and fails)
    assert any(f"ERROR {code}" in root.stderr for code in (1698, 1130, 1045)), root.stderr

    url = urlsplit(mariadb_server.url())
    assert (url.scheme, url.hostname, url.port, url.path) == (
        "mysql",
        "127.0.0.1",
        mariadb_server.port,
        "/appdb",
    )
    assert (url.username, unquote(url.password or "")) == ("app", mariadb_server.password)


def test_mariadb_started_late_and_killed() -> None:
    require(MariaDBServer)
    with MariaDBServer() as server:
        server.start(wait=False)
        assert server.wait_ready(30) < 30
        assert server.login().returncode == 0
        pid = server.process.pid if server.process else 0
    assert _gone(pid)


def test_rabbitmq_accepts_its_login_and_refuses_a_wrong_one(
    rabbitmq_server: RabbitMQServer,
) -> None:
    server = rabbitmq_server
    assert server.ctl("authenticate_user", server.user, server.password).returncode == 0
    assert server.ctl("authenticate_user", server.user, "wrong", check=False).returncode != 0

    server.login()  # AMQP 0-9-1 up to Connection.OpenOk on the vhost
    with pytest.raises(AMQPRefused) as refused:
        server.login(password="wrong")
    assert refused.value.code == 403
    with pytest.raises(AMQPRefused) as refused:
        server.login(user="guest", password="guest")
    assert refused.value.code == 403
    with pytest.raises(AMQPRefused) as refused:
        server.login(vhost="no-such-vhost")
    assert refused.value.code == 530

    url = urlsplit(server.url())
    assert (url.scheme, url.hostname, url.port, url.path) == (
        "amqp",
        "127.0.0.1",
        server.port,
        "/ekvhost",
    )
    assert (url.username, unquote(url.password or "")) == ("app", server.password)
