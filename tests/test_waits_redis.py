"""Waiting for Redis/Valkey (redis:// and friends), against real ``redis-server`` processes.

Every transient and permanent case of the Redis check is produced by a real server here:
not started yet, started late, LOADING after a restart with a dataset, BUSY, MASTERDOWN;
wrong password, unknown user, no password (NOAUTH), NOPERM, a database it does not have.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pytest
from servers import RedisServer
from test_wait import entrykit, later, refused_at_once, wait_url

from entrykit.errors import ConfigError, DependencyNotReady
from entrykit.waits.schemes import check_for_url

pytestmark = pytest.mark.skipif(not RedisServer.available(), reason="redis-server not installed")


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A server this test may restart, fill, block or cut off."""
    server = RedisServer()
    try:
        yield server
    finally:
        server.close()


def test_ping_after_auth_is_ready(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "entrykit.wait")
    assert wait_url(redis_server.url(), 10) == 1
    assert f"redis 127.0.0.1:{redis_server.port} ready after" in caplog.text
    # an ACL user with its own password, and the Valkey spelling of the same protocol
    wait_url(redis_server.url(user=redis_server.user), 10)
    wait_url(redis_server.url(scheme="valkey"), 10)


def test_wrong_password_is_refused_at_once(redis_server: RedisServer) -> None:
    error = refused_at_once(redis_server.url(password="wrong-secret"), "invalid username-password")
    assert "wrong-secret" not in str(error) and "***" in str(error)


def test_unknown_user_is_refused_at_once(redis_server: RedisServer) -> None:
    refused_at_once(redis_server.url(user="ghost", password="ghost-pw"), "invalid username")


def test_missing_password_is_refused_at_once(redis_server: RedisServer) -> None:
    # NOAUTH: the server wants a password and the URL has none
    refused_at_once(redis_server.url(password=""), "Authentication required")


def test_user_without_ping_permission_is_refused_at_once(redis_server: RedisServer) -> None:
    redis_server.command("ACL", "SETUSER", "noping", "on", ">noping-pw", "~*", "-@all")
    refused_at_once(redis_server.url(user="noping", password="noping-pw"), "NOPERM")


def test_database_the_server_does_not_have_is_refused(redis_server: RedisServer) -> None:
    refused_at_once(redis_server.url(db=99), "DB index is out of range")


def test_server_not_started_times_out_with_the_last_error(own_redis: RedisServer) -> None:
    started = time.monotonic()
    with pytest.raises(DependencyNotReady, match="Connection refused") as caught:
        wait_url(own_redis.url(), 1.0)
    assert 1.0 <= time.monotonic() - started < 2.5
    assert own_redis.password not in str(caught.value)


def test_server_started_late_is_seen_within_half_a_second(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "entrykit.wait")
    later(1.0, lambda: own_redis.start(wait=False))
    wait_url(own_redis.url(), 30)
    lag = time.monotonic() - own_redis.started_at
    assert "Connection refused" in caplog.text
    assert lag < 0.5 + 1.0  # the server's own start, then at most one interval and a try


def test_loading_after_a_restart_with_a_dataset_is_not_ready(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    own_redis.start()
    own_redis.populate(20000)
    own_redis.restart(wait=False, load_seconds=2.0)
    deadline = time.monotonic() + 10
    while not own_redis.ping().startswith("LOADING") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert own_redis.ping().startswith("LOADING")  # TCP accepts, the dataset is loading
    caplog.set_level(logging.INFO, "entrykit.wait")
    wait_url(own_redis.url(), 30)
    assert own_redis.ping() == "PONG"
    waiting = [r.getMessage() for r in caplog.records if "waiting for" in r.getMessage()]
    assert waiting and "LOADING" in waiting[0], caplog.text


def test_busy_script_is_not_ready(own_redis: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    own_redis.start()
    script = own_redis.busy(1.5)
    caplog.set_level(logging.INFO, "entrykit.wait")
    try:
        wait_url(own_redis.url(), 30)
    finally:
        script.wait(10)
    assert "BUSY" in caplog.text


def test_replica_with_its_master_down_is_not_ready(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    own_redis.start()
    own_redis.masterdown(True)
    caplog.set_level(logging.INFO, "entrykit.wait")
    later(1.0, lambda: own_redis.masterdown(False))
    wait_url(own_redis.url(), 30)
    assert "MASTERDOWN" in caplog.text


@pytest.mark.parametrize(
    "url", ["redis://:secret-pw@host:notaport/0", "redis://:secret-pw@host/notanumber"]
)
def test_bad_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        check_for_url(url)
    assert "secret-pw" not in str(caught.value)


@pytest.mark.slow
@pytest.mark.parametrize(
    "case", ["ready", "wrong password", "unknown user", "no password", "not started"]
)
def test_cli_exit_codes(redis_server: RedisServer, case: str) -> None:
    url = {
        "ready": redis_server.url(),
        "wrong password": redis_server.url(password="wrong-pass-123"),
        "unknown user": redis_server.url(user="nobody", password="wrong-pass-123"),
        "no password": redis_server.url(password=""),
        "not started": RedisServer(password="wrong-pass-123").url(),
    }[case]
    started = time.monotonic()
    result = entrykit("wait", url, "--timeout", "2")
    expected = {"ready": 0, "not started": 20}.get(case, 21)
    assert result.returncode == expected, result.stderr
    assert time.monotonic() - started < 5
    assert "wrong-pass-123" not in result.stderr and redis_server.password not in result.stderr
