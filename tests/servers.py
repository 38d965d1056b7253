"""Throwaway Redis, RabbitMQ and MariaDB servers on 127.0.0.1, for the tests and the benches.

Each server runs the Debian package's binary (``redis-server``, ``rabbitmq-server``,
``mariadbd``; CI installs them as root) in a temporary folder of its own, on free ports, with a
login configured, and never touches the packages' own data, config or services. Readiness is
checked with the vendor CLI or a raw socket, never with the Python clients that entrykit's extras
add, so these servers work without them. Benches import the classes directly::

    sys.path.insert(0, "tests")
    from servers import RedisServer

    server = RedisServer()          # ports are chosen here: a waiter can start first
    server.start(wait=False)        # returns at once ("started late")
    server.wait_ready()
    url = server.url()              # redis://:PASSWORD@127.0.0.1:PORT/0
    server.close()                  # kill it, delete its folder

Fixtures (session-scoped, one server each, skipped when the binary is missing or we are not
root):
``redis_server``, ``rabbitmq_server``, ``mariadb_server``. Do not stop or reconfigure them; a
test that needs to kill, restart or slow a server makes its own (``require(RedisServer)`` first:
the same skip) and calls ``close()`` at the end, or uses it as a context manager. Every server
still alive when the process exits is killed (atexit).
"""

from __future__ import annotations

import atexit
import contextlib
import getpass
import hashlib
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote

import pytest

HOST = "127.0.0.1"
_SBIN_PATH = os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin"

_live: set[_Server] = set()
_live_lock = threading.Lock()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def which(name: str) -> str | None:
    """``name`` on PATH or in the sbin folders (where Debian puts the servers)."""
    return shutil.which(name, path=_SBIN_PATH)


def _port_open(port: int, host: str = HOST, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class _Server:
    """The life cycle shared by the three servers: one process group per start."""

    name: ClassVar[str] = "server"
    prefix: ClassVar[str] = "ek-"

    def __init__(self, port: int | None) -> None:
        self.host = HOST
        self.port = port if port is not None else free_port()
        self.root = Path(tempfile.mkdtemp(prefix=self.prefix))
        os.chmod(self.root, 0o755)
        self.log_path = self.root / f"{self.name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        with _live_lock:
            _live.add(self)

    # -- to provide ---------------------------------------------------------------------

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _env(self) -> dict[str, str] | None:
        return None

    def _prepare(self) -> None:
        """Create what the first start needs (data directory, config)."""

    def ready(self) -> bool:
        """One readiness probe: True when the server accepts the configured login."""
        raise NotImplementedError

    # -- life cycle ---------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, *, wait: bool = True, timeout: float = 60.0) -> Any:
        """Start the server; with ``wait=False`` return at once (see ``wait_ready``)."""
        if self.running:
            return self
        self._prepare()
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it open
        try:
            self.process = subprocess.Popen(
                self._command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._env(),
                cwd=self.root,
                start_new_session=True,
            )
        finally:
            log.close()
        self.started_at = time.monotonic()
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60.0) -> float:
        """Block until the server accepts the configured login; return seconds since start."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process is None:
                raise RuntimeError(f"{self.name} was not started")
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            if self.ready():
                return time.monotonic() - self.started_at
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not ready within {timeout} s:\n{self.log_tail()}")
            time.sleep(0.02)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop gracefully (SIGTERM); killed if still running after ``timeout``."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            self.resume()
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout)
        self._kill_group()
        self.process = None

    def kill(self) -> None:
        """SIGKILL the server and everything it started (a crash, a container killed)."""
        if self.process is not None:
            self._kill_group()
            self.process = None

    def _kill_group(self) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)

    def restart(self, *, wait: bool = True, timeout: float = 60.0) -> None:
        self.stop()
        self.start(wait=wait, timeout=timeout)

    def pause(self) -> None:
        """SIGSTOP the server: the kernel still accepts TCP connections, nobody answers."""
        if self.process is not None:
            os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGCONT)

    def close(self) -> None:
        """Kill the server and delete its folder."""
        self.kill()
        shutil.rmtree(self.root, ignore_errors=True)
        with _live_lock:
            _live.discard(self)

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.host}:{self.port} running={self.running}>"


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_live):
        with contextlib.suppress(Exception):
            server.close()


# -- Redis -------------------------------------------------------------------------------


_ALL = ("~*", "&*", "+@all")


class RedisServer(_Server):
    """``redis-server`` on 127.0.0.1:``port``.

    The default user needs ``password`` (what ``requirepass`` sets); the ACL user ``user`` has
    ``user_password`` and every permission. ``url()`` gives ``redis://:PASSWORD@HOST:PORT/0``.
    States a wait must not take for ready: ``populate()`` + ``start(load_seconds=S)`` keeps the
    server answering ``LOADING`` for at least S seconds (TCP accepts at once); ``busy(S)``
    makes it answer ``BUSY``; ``masterdown()`` makes it answer ``MASTERDOWN``.
    """

    name = "redis"
    prefix = "ekredis-"

    def __init__(
        self,
        *,
        password: str = "redis-pw%@/:#",
        user: str = "app",
        user_password: str = "redis-app-pw%@/:#",
        port: int | None = None,
    ) -> None:
        super().__init__(port)
        self.password = password
        self.user = user
        self.user_password = user_password
        self.keys = 0  # keys in the RDB file that the next start loads
        self._load_delay_us = 0

    @staticmethod
    def available() -> bool:
        return which("redis-server") is not None and which("redis-cli") is not None

    def _prepare(self) -> None:
        def acl(user: str, password: str) -> str:
            digest = hashlib.sha256(password.encode()).hexdigest()
            return f"user {user} reset on #{digest} ~* &* +@all"

        lines = [
            f"port {self.port}",
            f"bind {self.host}",
            f'dir "{self.root}"',
            'unixsocket ""',
            "daemonize no",
            'save ""',
            "appendonly no",
            "protected-mode yes",
            "enable-debug-command local",
            "busy-reply-threshold 50",
            "loading-process-events-interval-bytes 1024",
            f"key-load-delay {self._load_delay_us}",
            acl("default", self.password),
            acl(self.user, self.user_password),
        ]
        (self.root / "redis.conf").write_text("\n".join(lines) + "\n")

    def _command(self) -> list[str]:
        return [which("redis-server") or "redis-server", str(self.root / "redis.conf")]

    def start(
        self, *, wait: bool = True, timeout: float = 60.0, load_seconds: float = 0.0
    ) -> RedisServer:
        """Start; ``load_seconds`` > 0 makes loading the keys of ``populate()`` take that long
        at least (the server accepts TCP at once and answers ``LOADING`` meanwhile)."""
        if load_seconds > 0 and not self.keys:
            raise ValueError("load_seconds needs populate() first: there is nothing to load")
        self._load_delay_us = int(load_seconds * 1e6 / self.keys) if load_seconds > 0 else 0
        super().start(wait=wait, timeout=timeout)
        return self

    def restart(
        self, *, wait: bool = True, timeout: float = 60.0, load_seconds: float = 0.0
    ) -> None:
        self.stop()
        self.start(wait=wait, timeout=timeout, load_seconds=load_seconds)

    def ready(self) -> bool:
        return self.ping() == "PONG"

    def stop(self, timeout: float = 30.0) -> None:
        """Stop (SIGTERM, after ending a ``busy()`` script: Redis waits for it otherwise)."""
        if self.running:
            self.resume()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.cli("SCRIPT", "KILL", timeout=2)
        super().stop(timeout)

    def cli(
        self, *args: str, user: str | None = None, password: str | None = None, timeout: float = 10
    ) -> subprocess.CompletedProcess[str]:
        """``redis-cli`` against this server, as the default user (or ``user``) by default.

        redis-cli exits 0 even when AUTH fails: look at ``stdout``/``stderr``.
        """
        if password is None:
            password = self.password if user is None else self.user_password
        command = [which("redis-cli") or "redis-cli", "-h", self.host, "-p", str(self.port)]
        if user is not None:
            command += ["--user", user]
        if password:
            command += ["--pass", password, "--no-auth-warning"]
        return subprocess.run(
            [*command, *args], capture_output=True, text=True, timeout=timeout, check=False
        )

    def ping(self, *, user: str | None = None, password: str | None = None) -> str:
        """What PING answers, after AUTH: ``PONG``, or the error (``LOADING ...``, ``WRONGPASS
        ...``, ``BUSY ...``), or ``""`` when nothing answers."""
        result = self.cli("PING", user=user, password=password, timeout=5)
        if result.stderr.startswith("Could not connect"):
            return ""
        lines = (result.stdout + result.stderr).strip().splitlines()
        for line in lines:
            if line.startswith("AUTH failed:"):
                return line.removeprefix("AUTH failed:").strip()
        return lines[-1].strip() if lines else ""

    def command(self, *args: str) -> str:
        """Run one command as the default user; its reply, or raise on an error reply."""
        result = self.cli(*args, timeout=120)
        out = result.stdout.strip()
        if result.returncode or out.startswith(("ERR", "WRONGPASS", "NOAUTH", "NOPERM")):
            raise RuntimeError(f"redis {args[0]}: {out} {result.stderr.strip()}")
        return out

    def add_user(self, user: str, password: str, *rules: str) -> None:
        """``ACL SETUSER user reset on >password RULES`` (default rules: every permission;
        ``add_user("ro", "pw", "~*", "-@all")`` gives a user whose PING is ``NOPERM``)."""
        self.command("ACL", "SETUSER", user, "reset", "on", f">{password}", *(rules or _ALL))

    def populate(self, keys: int = 2000, value_size: int = 100) -> None:
        """Add ``keys`` keys (DEBUG POPULATE) and SAVE them: the RDB every later start loads."""
        self.command("DEBUG", "POPULATE", str(keys), "ekpop", str(value_size))
        self.command("SAVE")
        self.keys = int(self.command("DBSIZE"))

    def busy(self, seconds: float) -> subprocess.Popen[bytes]:
        """Run a Lua script that spins ``seconds``: meanwhile every other client gets ``BUSY``.
        Returns the redis-cli process running the script (it ends by itself)."""
        script = (
            "local function now() local t = redis.call('TIME') return t[1] + t[2] / 1e6 end "
            f"local stop = now() + {seconds} while now() < stop do end return 1"
        )
        command = [
            which("redis-cli") or "redis-cli",
            "-h",
            self.host,
            "-p",
            str(self.port),
            "--pass",
            self.password,
            "--no-auth-warning",
            "EVAL",
            script,
            "0",
        ]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 5
        while not self.ping().startswith("BUSY") and time.monotonic() < deadline:
            time.sleep(0.01)
        return process

    def masterdown(self, down: bool = True) -> None:
        """Make the server a replica of a dead master that refuses stale reads (PING answers
        ``MASTERDOWN``); ``masterdown(False)`` makes it a master again."""
        if down:
            self.command("CONFIG", "SET", "replica-serve-stale-data", "no")
            self.command("REPLICAOF", self.host, str(free_port()))
            deadline = time.monotonic() + 5
            while not self.ping().startswith("MASTERDOWN") and time.monotonic() < deadline:
                time.sleep(0.01)
        else:
            self.command("REPLICAOF", "NO", "ONE")

    def url(
        self,
        *,
        user: str | None = None,
        password: str | None = None,
        db: int | str = 0,
        scheme: str = "redis",
        host: str | None = None,
    ) -> str:
        """``redis://:PASSWORD@HOST:PORT/DB`` for the default user, or ``redis://USER:PW@...``;
        ``password=""`` gives a URL without a password. Percent-encoded."""
        if password is None:
            password = self.password if user is None else self.user_password
        auth = quote(user or "", safe="")
        if password:
            auth += ":" + quote(password, safe="")
        at = f"{auth}@" if auth else ""
        return f"{scheme}://{at}{host or self.host}:{self.port}/{db}"


# -- RabbitMQ ----------------------------------------------------------------------------


class AMQPRefused(Exception):
    """The broker closed the connection during the handshake (403 ACCESS_REFUSED, 530
    NOT_ALLOWED, ...)."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"{code} {text}")
        self.code = code
        self.text = text


def _shortstr(value: str) -> bytes:
    data = value.encode()
    return struct.pack("B", len(data)) + data


def _longstr(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _frame(payload: bytes) -> bytes:
    return struct.pack(">BHI", 1, 0, len(payload)) + payload + b"\xce"


def _read_method(sock: socket.socket) -> tuple[int, int, bytes]:
    def exactly(size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = sock.recv(size - len(data))
            if not chunk:
                raise ConnectionError("the broker closed the connection")
            data += chunk
        return data

    while True:
        kind, _channel, size = struct.unpack(">BHI", exactly(7))
        payload = exactly(size + 1)[:-1]
        if kind == 1:
            class_id, method_id = struct.unpack(">HH", payload[:4])
            return class_id, method_id, payload[4:]
        if kind == ord("A"):  # "AMQP" + version: the broker wants another protocol
            raise ConnectionError("the broker refused the protocol version")


def amqp_login(
    host: str, port: int, user: str, password: str, vhost: str = "/", timeout: float = 5.0
) -> None:
    """An AMQP 0-9-1 handshake up to Connection.OpenOk on ``vhost``, then a clean close.

    Raises ``AMQPRefused`` when the broker refuses the login (403) or the vhost (530), and
    ``OSError`` (``ConnectionError``, ``TimeoutError``) when it does not answer the handshake.
    """
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(b"AMQP\x00\x00\x09\x01")
        class_id, method_id, _ = _read_method(sock)
        if (class_id, method_id) != (10, 10):
            raise ConnectionError(f"expected Connection.Start, got {class_id}.{method_id}")
        capabilities = _shortstr("authentication_failure_close") + b"t\x01"
        properties = _shortstr("capabilities") + b"F" + _longstr(capabilities)
        response = b"\x00" + user.encode() + b"\x00" + password.encode()
        start_ok = (
            struct.pack(">HH", 10, 11)
            + _longstr(properties)
            + _shortstr("PLAIN")
            + _longstr(response)
            + _shortstr("en_US")
        )
        sock.sendall(_frame(start_ok))
        while True:
            class_id, method_id, args = _read_method(sock)
            if (class_id, method_id) == (10, 50):  # Connection.Close
                code = struct.unpack(">H", args[:2])[0]
                text = args[3 : 3 + args[2]].decode(errors="replace")
                with contextlib.suppress(OSError):
                    sock.sendall(_frame(struct.pack(">HH", 10, 51)))
                raise AMQPRefused(code, text)
            if (class_id, method_id) == (10, 30):  # Tune -> TuneOk, Open
                channel_max, frame_max, _heartbeat = struct.unpack(">HIH", args[:8])
                tune_ok = struct.pack(">HHHIH", 10, 31, channel_max, frame_max, 0)
                open_ = struct.pack(">HH", 10, 40) + _shortstr(vhost) + _shortstr("") + b"\x00"
                sock.sendall(_frame(tune_ok) + _frame(open_))
            elif (class_id, method_id) == (10, 41):  # OpenOk
                close = struct.pack(">HHH", 10, 50, 200) + _shortstr("") + b"\x00" * 4
                sock.sendall(_frame(close))
                with contextlib.suppress(OSError, ConnectionError):
                    _read_method(sock)  # CloseOk
                return


def _erlang_binary(value: str) -> str:
    """``value`` as an Erlang binary literal that needs no escaping."""
    return "<<" + ",".join(str(byte) for byte in value.encode()) + ">>"


class RabbitMQServer(_Server):
    """``rabbitmq-server`` on 127.0.0.1:``port`` (AMQP 0-9-1), no plugins.

    The node is ``ek<hex>@localhost`` with its own Erlang cookie, its own epmd (on
    ``epmd_port``; started with the object, stopped by ``close()``), its own distribution port
    and mnesia/log folders. On first start the broker creates ``user``/``password`` (tag
    administrator, all permissions) on ``vhost``; there is no ``guest`` user and no ``/`` vhost.
    ``url()`` gives ``amqp://USER:PASSWORD@HOST:PORT/VHOST``. ``ctl(...)`` runs rabbitmqctl.
    """

    name = "rabbitmq"
    prefix = "ekrabbit-"

    def __init__(
        self,
        *,
        user: str = "app",
        password: str = "rabbit-pw%@/:#",
        vhost: str = "ekvhost",
        port: int | None = None,
    ) -> None:
        super().__init__(port)
        self.user = user
        self.password = password
        self.vhost = vhost
        self.node = f"ek{uuid.uuid4().hex[:10]}@localhost"
        self.epmd_port = free_port()
        self.dist_port = free_port()
        self.cookie = secrets.token_hex(16)
        self._epmd: subprocess.Popen[bytes] | None = None

    @staticmethod
    def _bin(name: str) -> str | None:
        # /usr/sbin/rabbitmq* are wrappers that su to the rabbitmq user and its files.
        packaged = Path("/usr/lib/rabbitmq/bin") / name
        return str(packaged) if packaged.exists() else which(name)

    @classmethod
    def available(cls) -> bool:
        return cls._bin("rabbitmq-server") is not None and which("epmd") is not None

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(self.root),  # the Erlang cookie: server and CLI read $HOME/.erlang.cookie
            ERL_EPMD_PORT=str(self.epmd_port),
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_USE_LONGNAME="false",
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_CTL_DIST_PORT_MIN="0",  # the CLI's own node: any free port
            RABBITMQ_CTL_DIST_PORT_MAX="0",
            RABBITMQ_CTL_ERL_ARGS="-start_epmd false",
            # -code_path_cache: the boot looks up thousands of modules in ~100 folders.
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-start_epmd false -code_path_cache",
            RABBITMQ_CONF_ENV_FILE=str(self.root / "rabbitmq-env.conf"),
            RABBITMQ_CONFIG_FILE=str(self.root / "rabbitmq.config"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(self.root / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.root / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(self.root / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.root / "log"),
            RABBITMQ_PLUGINS_EXPAND_DIR=str(self.root / "plugins-expand"),
            RABBITMQ_LOGS="-",  # the log goes to stdout, which is rabbitmq.log
        )
        return env

    def _prepare(self) -> None:
        cookie = self.root / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(self.cookie)
            os.chmod(cookie, 0o400)
        (self.root / "rabbitmq-env.conf").write_text("")
        (self.root / "enabled_plugins").write_text("[].\n")
        (self.root / "rabbitmq.config").write_text(
            "[{rabbit, [\n"
            f'  {{tcp_listeners, [{{"{self.host}", {self.port}}}]}},\n'
            f"  {{default_user, {_erlang_binary(self.user)}}},\n"
            f"  {{default_pass, {_erlang_binary(self.password)}}},\n"
            f"  {{default_vhost, {_erlang_binary(self.vhost)}}},\n"
            '  {default_permissions, [<<".*">>, <<".*">>, <<".*">>]},\n'
            "  {default_user_tags, [administrator]},\n"
            "  {loopback_users, []}\n"
            "]}].\n"
        )
        self._start_epmd()

    def _start_epmd(self) -> None:
        if self._epmd is not None and self._epmd.poll() is None:
            return
        self._epmd = subprocess.Popen(
            [which("epmd") or "epmd", "-port", str(self.epmd_port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while not _port_open(self.epmd_port):
            if self._epmd.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"epmd did not start on port {self.epmd_port}")
            time.sleep(0.01)

    def _command(self) -> list[str]:
        return [self._bin("rabbitmq-server") or "rabbitmq-server"]

    def start(self, *, wait: bool = True, timeout: float = 90.0) -> RabbitMQServer:
        """Start; ``wait=False`` returns at once. A cold start takes several seconds."""
        super().start(wait=wait, timeout=timeout)
        return self

    def restart(self, *, wait: bool = True, timeout: float = 90.0) -> None:
        super().restart(wait=wait, timeout=timeout)

    def wait_ready(self, timeout: float = 90.0) -> float:
        return super().wait_ready(timeout)

    def ready(self) -> bool:
        try:
            amqp_login(self.host, self.port, self.user, self.password, self.vhost, timeout=2)
        except (OSError, AMQPRefused):
            return False
        return True

    def login(
        self, user: str | None = None, password: str | None = None, vhost: str | None = None
    ) -> None:
        """An AMQP handshake (``amqp_login``) with these credentials, the configured ones by
        default; raises ``AMQPRefused`` (403 wrong login, 530 vhost) or ``OSError``."""
        amqp_login(
            self.host,
            self.port,
            self.user if user is None else user,
            self.password if password is None else password,
            self.vhost if vhost is None else vhost,
        )

    def _cli(
        self, tool: str, args: Sequence[str], check: bool, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self._bin(tool) or tool, "-n", self.node, *args],
            capture_output=True,
            text=True,
            env=self._env(),
            cwd=self.root,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode:
            raise RuntimeError(
                f"{tool} {' '.join(args)}: exit {result.returncode}\n{result.stdout}{result.stderr}"
            )
        return result

    def ctl(
        self, *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """``rabbitmqctl -n NODE ARGS`` (about a second each: it boots an Erlang VM)."""
        return self._cli("rabbitmqctl", args, check, timeout)

    def diagnostics(
        self, *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """``rabbitmq-diagnostics -n NODE ARGS``."""
        return self._cli("rabbitmq-diagnostics", args, check, timeout)

    def add_vhost(self, vhost: str) -> None:
        self.ctl("add_vhost", vhost)

    def add_user(
        self, user: str, password: str, vhost: str | None = None, tags: Sequence[str] = ()
    ) -> None:
        """Create ``user``; with ``vhost``, give it every permission there."""
        self.ctl("add_user", user, password)
        if tags:
            self.ctl("set_user_tags", user, *tags)
        if vhost is not None:
            self.ctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the broker gracefully (the start script turns SIGTERM into a clean stop)."""
        super().stop(timeout)

    def close(self) -> None:
        super().close()
        if self._epmd is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._epmd.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._epmd.wait(10)
            self._epmd = None

    def url(
        self,
        *,
        user: str | None = None,
        password: str | None = None,
        vhost: str | None = None,
        scheme: str = "amqp",
        host: str | None = None,
        db: str | None = None,
    ) -> str:
        """``amqp://USER:PASSWORD@HOST:PORT/VHOST``, percent-encoded (vhost ``/`` is ``%2F``);
        ``password=""`` gives a URL without a password; ``db`` is another name for ``vhost``."""
        user = self.user if user is None else user
        password = self.password if password is None else password
        vhost = vhost if vhost is not None else db if db is not None else self.vhost
        auth = quote(user, safe="") + (":" + quote(password, safe="") if password else "")
        return f"{scheme}://{auth}@{host or self.host}:{self.port}/{quote(vhost, safe='')}"


# -- MariaDB -----------------------------------------------------------------------------

_MARIADB_SPEED = [
    "--skip-log-bin",
    "--skip-name-resolve",
    "--innodb-log-file-size=8M",
    "--innodb-buffer-pool-size=32M",
    "--innodb-flush-method=nosync",
    "--innodb-doublewrite=0",
    "--innodb-flush-log-at-trx-commit=0",
]
_mariadb_template_lock = threading.Lock()
_mariadb_template_dir: Path | None = None


def _os_user() -> str:
    return getpass.getuser()


def _mariadb_template() -> Path:
    """A ``mariadb-install-db``'ed data directory, made once per process, copied per server."""
    global _mariadb_template_dir
    with _mariadb_template_lock:
        if _mariadb_template_dir is not None and _mariadb_template_dir.exists():
            return _mariadb_template_dir
        root = Path(tempfile.mkdtemp(prefix="ekmariadb-template-"))
        atexit.register(shutil.rmtree, root, True)
        data = root / "data"
        install = which("mariadb-install-db") or which("mysql_install_db") or "mariadb-install-db"
        result = subprocess.run(
            [
                install,
                "--no-defaults",
                f"--datadir={data}",
                f"--user={_os_user()}",  # also the OS user let in as root over the socket
                "--auth-root-authentication-method=socket",
                "--skip-test-db",
                *_MARIADB_SPEED,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode:
            raise RuntimeError(f"mariadb-install-db failed:\n{result.stdout}{result.stderr}")
        _mariadb_template_dir = data
        return data


def _sql_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _sql_name(value: str) -> str:
    return "`" + value.replace("`", "``") + "`"


class MariaDBServer(_Server):
    """``mariadbd`` on 127.0.0.1:``port``, its data directory copied from a per-process
    ``mariadb-install-db`` template.

    ``user``@``%`` with ``password`` holds ALL PRIVILEGES ON *.* (so a missing database is
    error 1049, not 1044); ``database`` exists. Root logs in only over the Unix socket
    (``execute()``), never over TCP. ``url()`` gives ``mysql://USER:PASSWORD@HOST:PORT/DB``.
    """

    name = "mariadb"
    prefix = "ekmariadb-"

    def __init__(
        self,
        *,
        user: str = "app",
        password: str = "maria-pw%@/:#",
        database: str = "appdb",
        port: int | None = None,
    ) -> None:
        super().__init__(port)
        self.user = user
        self.password = password
        self.database = database
        self.data = self.root / "data"
        self.socket = self.root / "mysqld.sock"

    @staticmethod
    def available() -> bool:
        return (
            (which("mariadbd") or which("mysqld")) is not None
            and (which("mariadb-install-db") or which("mysql_install_db")) is not None
            and (which("mariadb") or which("mysql")) is not None
        )

    def _prepare(self) -> None:
        if not self.data.exists():
            shutil.copytree(_mariadb_template(), self.data, symlinks=True)
        # Runs at every start, before the server takes connections.
        (self.root / "init.sql").write_text(
            f"CREATE DATABASE IF NOT EXISTS {_sql_name(self.database)};\n"
            f"CREATE USER IF NOT EXISTS {_sql_string(self.user)}@'%' "
            f"IDENTIFIED BY {_sql_string(self.password)};\n"
            f"GRANT ALL PRIVILEGES ON *.* TO {_sql_string(self.user)}@'%';\n"
        )

    def _command(self) -> list[str]:
        return [
            which("mariadbd") or which("mysqld") or "mariadbd",
            "--no-defaults",
            f"--datadir={self.data}",
            f"--user={_os_user()}",
            f"--port={self.port}",
            f"--bind-address={self.host}",
            f"--socket={self.socket}",
            f"--pid-file={self.root / 'mysqld.pid'}",
            f"--init-file={self.root / 'init.sql'}",
            "--skip-performance-schema",
            "--max-connections=200",
            *_MARIADB_SPEED,
        ]

    def start(self, *, wait: bool = True, timeout: float = 60.0) -> MariaDBServer:
        super().start(wait=wait, timeout=timeout)
        return self

    def ready(self) -> bool:
        return self.login().returncode == 0

    def mysql(
        self, *args: str, user: str | None = None, password: str | None = None, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """The ``mysql`` client over TCP, as ``user`` (default: the configured login)."""
        user = self.user if user is None else user
        password = self.password if password is None else password
        client = which("mariadb") or which("mysql") or "mysql"
        return subprocess.run(
            [
                client,
                "--no-defaults",
                "--protocol=TCP",
                f"--host={self.host}",
                f"--port={self.port}",
                f"--user={user}",
                f"--password={password}",
                "--connect-timeout=2",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def login(
        self, user: str | None = None, password: str | None = None, database: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``SELECT 1`` over TCP: returncode 0, or 1 with ``ERROR 1045 ...`` in stderr."""
        return self.mysql(
            "--batch",
            "-e",
            "SELECT 1",
            self.database if database is None else database,
            user=user,
            password=password,
            timeout=10,
        )

    def execute(self, sql: str, database: str | None = None) -> str:
        """Run ``sql`` as root over the Unix socket; the tab-separated rows, without header."""
        client = which("mariadb") or which("mysql") or "mysql"
        result = subprocess.run(
            [
                client,
                "--no-defaults",
                f"--socket={self.socket}",
                f"--user={'root' if os.geteuid() == 0 else _os_user()}",
                "--batch",
                "--skip-column-names",
                "-e",
                sql,
                *([database] if database else []),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode:
            raise RuntimeError(f"mariadb: {result.stderr.strip()}")
        return result.stdout

    def create_user(self, user: str, password: str, grant: str | None = None) -> None:
        """Create ``user``@``%``; ``grant`` such as ``"appdb.*"`` gives ALL PRIVILEGES there."""
        sql = f"CREATE USER {_sql_string(user)}@'%' IDENTIFIED BY {_sql_string(password)};"
        if grant:
            sql += f" GRANT ALL PRIVILEGES ON {grant} TO {_sql_string(user)}@'%';"
        self.execute(sql)

    def create_database(self, name: str | None = None) -> str:
        name = name or f"db_{uuid.uuid4().hex[:12]}"
        self.execute(f"CREATE DATABASE {_sql_name(name)}")
        return name

    def url(
        self,
        *,
        user: str | None = None,
        password: str | None = None,
        db: str | None = None,
        scheme: str = "mysql",
        host: str | None = None,
    ) -> str:
        """``mysql://USER:PASSWORD@HOST:PORT/DB``, percent-encoded; ``password=""`` gives a URL
        without a password, ``db=""`` one without a database."""
        user = self.user if user is None else user
        password = self.password if password is None else password
        db = self.database if db is None else db
        auth = quote(user, safe="") + (":" + quote(password, safe="") if password else "")
        return f"{scheme}://{auth}@{host or self.host}:{self.port}/{quote(db, safe='')}"


# -- fixtures ----------------------------------------------------------------------------


_BINARY = {"RedisServer": "redis-server", "RabbitMQServer": "rabbitmq-server"}


def require(server_class: type[RedisServer | RabbitMQServer | MariaDBServer]) -> None:
    """``pytest.skip`` unless ``server_class`` can run here: its binaries are installed and we
    are root (CI installs the Debian packages as root)."""
    binary = _BINARY.get(server_class.__name__, "mariadb-server")
    if not server_class.available():
        pytest.skip(f"{binary} not installed (CI installs it as root)")
    if os.geteuid() != 0:
        pytest.skip(f"{binary}: the test servers run as root only (as in CI)")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One Redis for the session (url(): redis://:PASSWORD@127.0.0.1:PORT/0); do not stop it."""
    require(RedisServer)
    server = RedisServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def rabbitmq_server() -> Iterator[RabbitMQServer]:
    """One RabbitMQ for the session (url(): amqp://app:PASSWORD@127.0.0.1:PORT/ekvhost)."""
    require(RabbitMQServer)
    server = RabbitMQServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[MariaDBServer]:
    """One MariaDB for the session (url(): mysql://app:PASSWORD@127.0.0.1:PORT/appdb)."""
    require(MariaDBServer)
    server = MariaDBServer()
    try:
        server.start()
        yield server
    finally:
        server.close()
