"""Waiting for RabbitMQ (amqp://), against real ``rabbitmq-server`` processes: the handshake
up to Connection.OpenOk on the URL's vhost; a refused login or vhost is exit 21 at once."""

from __future__ import annotations

import logging
import time

import pytest
from servers import RabbitMQServer
from test_wait import entrykit, refused_at_once, wait_url

from entrykit.errors import ConfigError, DependencyNotReady
from entrykit.waits.schemes import check_for_url

pytestmark = pytest.mark.skipif(
    not RabbitMQServer.available(), reason="rabbitmq-server not installed"
)


def test_handshake_on_the_vhost_is_ready(
    rabbitmq_server: RabbitMQServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "entrykit.wait")
    assert wait_url(rabbitmq_server.url(), 10) == 1
    assert f"amqp 127.0.0.1:{rabbitmq_server.port} ready after" in caplog.text
    assert rabbitmq_server.password not in caplog.text


def test_wrong_password_is_refused_at_once(rabbitmq_server: RabbitMQServer) -> None:
    error = refused_at_once(rabbitmq_server.url(password="wrong-secret"), "ACCESS_REFUSED")
    assert "wrong-secret" not in str(error)


def test_unknown_user_is_refused_at_once(rabbitmq_server: RabbitMQServer) -> None:
    refused_at_once(rabbitmq_server.url(user="ghost", password="ghost-pw"), "ACCESS_REFUSED")


def test_unknown_vhost_is_refused_at_once(rabbitmq_server: RabbitMQServer) -> None:
    refused_at_once(rabbitmq_server.url(vhost="no-such-vhost"), "NOT_ALLOWED")


def test_default_vhost_of_celery_urls_is_slash(rabbitmq_server: RabbitMQServer) -> None:
    # amqp://u:p@host:port// means vhost "/", which this broker does not have
    url = rabbitmq_server.url(vhost="") + "/"
    refused_at_once(url, "vhost / not found")


def test_broker_not_started_times_out() -> None:
    server = RabbitMQServer()
    try:
        with pytest.raises(DependencyNotReady, match="refused") as caught:
            wait_url(server.url(), 1.0)
        assert server.password not in str(caught.value)
    finally:
        server.close()


@pytest.mark.slow
def test_broker_started_late_is_seen_at_once(caplog: pytest.LogCaptureFixture) -> None:
    server = RabbitMQServer()
    try:
        server.start(wait=False)
        caplog.set_level(logging.INFO, "entrykit.wait")
        wait_url(server.url(), 90)
        seen = time.monotonic()
        # the broker's own probe (a raw handshake) agrees at once: no early "ready"
        server.login()
        assert "waiting for amqp" in caplog.text
        assert seen - server.started_at > 1.0  # it did have to wait for the boot
    finally:
        server.close()


def test_bad_urls_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        check_for_url("amqp://u:secret-pw@host:notaport/v")
    with pytest.raises(ConfigError):
        check_for_url("amqp:///vhost")


@pytest.mark.slow
@pytest.mark.parametrize("case", ["ready", "wrong password", "unknown vhost"])
def test_cli_exit_codes(rabbitmq_server: RabbitMQServer, case: str) -> None:
    url = {
        "ready": rabbitmq_server.url(),
        "wrong password": rabbitmq_server.url(password="wrong-pass-123"),
        "unknown vhost": rabbitmq_server.url(vhost="nope"),
    }[case]
    result = entrykit("wait", url, "--timeout", "5")
    assert result.returncode == (0 if case == "ready" else 21), result.stderr
    assert "wrong-pass-123" not in result.stderr
    assert rabbitmq_server.password not in result.stderr
