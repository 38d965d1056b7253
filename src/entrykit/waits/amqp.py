"""Waiting for an AMQP 0-9-1 broker (RabbitMQ) with py-amqp: the handshake must reach
Connection.OpenOk on the URL's virtual host.

Refused for good: the login (403 ACCESS_REFUSED) and the virtual host (530 NOT_ALLOWED).
Anything else (refused or dropped connections, timeouts, a broker still booting or shutting
down) may pass. The URL follows Celery/kombu: ``amqp://USER:PASSWORD@HOST:PORT/VHOST``,
``guest``/``guest`` when the URL names no user, the path's first ``/`` dropped, so ``//`` and
no path both mean the vhost ``/``.
"""

from __future__ import annotations

import contextlib
from typing import Any
from urllib.parse import unquote, urlsplit

from entrykit.errors import ConfigError
from entrykit.logs import mask_url
from entrykit.waits.check import Check, ErrorKind, host_port, raise_classified
from entrykit.waits.clients import require_client
from entrykit.waits.urls import url_host

_REFUSED_CODES = {403, 530}  # ACCESS_REFUSED, NOT_ALLOWED


def classify_amqp_error(error: BaseException) -> ErrorKind:
    """Is a failed AMQP handshake worth retrying, or refused for good?"""
    code = getattr(error, "code", None)
    return "refused" if code in _REFUSED_CODES else "transient"


def amqp_check(url: str) -> Check:
    """The AMQP handshake with the broker of an ``amqp://`` or ``amqps://`` URL.

    Raises ConfigError for a bad URL or when py-amqp (the ``rabbitmq`` extra) is missing.
    """
    scheme = url.partition("://")[0].lower()
    amqp = require_client("amqp", "rabbitmq", scheme)
    try:
        parts = urlsplit(url)
        port = parts.port or (5671 if scheme == "amqps" else 5672)
    except ValueError as error:
        raise ConfigError(f"invalid URL {mask_url(url)!r}: {error}") from None
    if not parts.hostname:
        raise ConfigError(f"invalid URL {mask_url(url)!r}: no host")
    address = host_port(url_host(parts), port)
    user = unquote(parts.username) if parts.username is not None else "guest"
    password = unquote(parts.password) if parts.password is not None else "guest"
    vhost = unquote(parts.path[1:]) or "/"
    masked = mask_url(url)

    def attempt(timeout: float) -> None:
        connection: Any = amqp.Connection(
            host=address,
            userid=user,
            password=password,
            virtual_host=vhost,
            ssl=scheme == "amqps",
            connect_timeout=timeout,
            read_timeout=timeout,
            write_timeout=timeout,
            heartbeat=0,
        )
        try:
            connection.connect()  # returns after Connection.OpenOk
        except Exception as error:
            with contextlib.suppress(Exception):
                connection.collect()
            raise_classified(classify_amqp_error(error), f"amqp {address}", masked, _reason(error))
        with contextlib.suppress(Exception):
            connection.close()

    return Check(f"amqp {address}", f"amqp {masked}", attempt)


def _reason(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    # py-amqp: '(0, 0): (403) ACCESS_REFUSED - Login was refused ...'
    return text.removeprefix("(0, 0): ").removeprefix("Connection.open: ")
