"""Waiting for MongoDB (mongodb://). No MongoDB server can be installed here (it is in neither
Debian nor PyPI): the not-ready, timeout and bad-URL paths run against real sockets, and the
ready and refused paths only where a ``mongod`` is on PATH."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from postgres_fixtures import free_port
from test_wait import entrykit, wait_url

from entrykit.errors import ConfigError, DatabaseRefused, DependencyNotReady
from entrykit.waits.schemes import check_for_url


def test_refused_port_is_not_ready_until_the_deadline() -> None:
    started = time.monotonic()
    with pytest.raises(DependencyNotReady, match="Connection refused") as caught:
        wait_url(f"mongodb://app:secret-pw@127.0.0.1:{free_port()}/admin", 1.5)
    assert 1.5 <= time.monotonic() - started < 4
    assert "secret-pw" not in str(caught.value)
    assert "configured timeouts" not in str(caught.value)


def test_server_that_never_answers_times_out_each_attempt() -> None:
    # the kernel accepts the connection, nothing ever answers the hello
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        started = time.monotonic()
        with pytest.raises(DependencyNotReady, match="timed out"):
            wait_url(f"mongodb://127.0.0.1:{listener.getsockname()[1]}/", 1.5)
        assert time.monotonic() - started < 4
    finally:
        listener.close()


@pytest.mark.parametrize(
    "url",
    [
        "mongodb://u:secret-pw@h:notaport/",
        "mongodb://u:secret-pw@h/?w=abc&nosuchoption=1",
        "mongodb://",
    ],
)
def test_bad_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        check_for_url(url)
    assert "secret-pw" not in str(caught.value)


def test_replica_set_seed_list_survives_the_comma_list() -> None:
    from entrykit.settings import Settings
    from entrykit.waits.run import dependency_checks

    environ = {"ENTRYKIT_WAIT_FOR": "mongodb://a:27017,b:27017/?replicaSet=rs,tcp://x:1"}
    checks = dependency_checks(Settings.load(environ=environ))
    assert [check.what for check in checks] == ["mongodb a:27017,b:27017", "tcp x:1"]


@pytest.mark.slow
def test_cli_refused_port_exits_20() -> None:
    result = entrykit("wait", f"mongodb://u:secret-pw@127.0.0.1:{free_port()}/", "--timeout", "1")
    assert result.returncode == 20, result.stderr
    assert "secret-pw" not in result.stderr


# -- with a real mongod (only where one is installed) ------------------------------------------

MONGOD = shutil.which("mongod")
needs_mongod = pytest.mark.skipif(
    MONGOD is None, reason="mongod is not on PATH (not installable here)"
)


@pytest.fixture
def mongod() -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    assert MONGOD is not None
    folder = Path(tempfile.mkdtemp(prefix="ekmongo-"))
    port = free_port()
    process = subprocess.Popen(
        [MONGOD, "--dbpath", str(folder), "--port", str(port), "--bind_ip", "127.0.0.1", "--auth"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield port, process
    finally:
        process.kill()
        process.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


@needs_mongod
def test_ping_on_a_started_late_mongod_is_ready(
    mongod: tuple[int, subprocess.Popen[bytes]],
) -> None:
    port, _ = mongod
    wait_url(f"mongodb://127.0.0.1:{port}/", 60)


@needs_mongod
def test_wrong_password_is_refused_at_once(mongod: tuple[int, subprocess.Popen[bytes]]) -> None:
    port, _ = mongod
    wait_url(f"mongodb://127.0.0.1:{port}/", 60)
    import pymongo

    # the localhost exception lets the first user be created without authentication
    pymongo.MongoClient(f"mongodb://127.0.0.1:{port}/").admin.command(
        "createUser", "app", pwd="right-pw", roles=["root"]
    )
    wait_url(f"mongodb://app:right-pw@127.0.0.1:{port}/admin", 30)
    started = time.monotonic()
    with pytest.raises(DatabaseRefused, match="Authentication failed"):
        wait_url(f"mongodb://app:wrong-pw@127.0.0.1:{port}/admin", 30)
    assert time.monotonic() - started < 5


def test_an_srv_url_without_credentials_is_named_by_its_host() -> None:
    check = check_for_url("mongodb+srv://cluster0.example.net/?retryWrites=true")
    assert check is not None
    assert check.what == "mongodb cluster0.example.net"
