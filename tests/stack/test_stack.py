"""The example stack, up for real: infra/docker/compose.yaml under podman-compose.

What a user without Docker Hub does (docs/docker.md, "Podman"): build with
``BUILDAH_FORMAT=docker`` through ``compose.local.yaml`` (PostgreSQL and Redis from Debian's
packages), then ``up -d --no-deps``: podman 4.3 cannot order a one-shot ``migrate`` in a
``depends_on`` chain, and needs none, since entrykit orders the start itself (``migrate`` waits
for the database, the API and the worker wait for head, the worker waits for Redis).

The only other file the test adds is an override pointing the secrets at files of its own
(the repository's ``infra/docker/secrets/`` are the developer's). Each test is a compose project
of its own, taken down with ``down -v`` at the end; the three images are built once per session,
and podman's layer cache makes a rebuild cheap.

Needs root and ``tests/container/setup-podman.sh`` (podman, the DNS plugin, podman-compose, the
base image). Skipped only where podman cannot run: not root, or podman not installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from postgres_fixtures import free_port
from test_container import _ca_bundle, _pip_build_args, _podman_env

pytestmark = [pytest.mark.container, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "infra" / "docker"
APP_IMAGE = "localhost/entrykit-example:stack-test"
PASSWORD = "stack-pw-" + uuid.uuid4().hex
SUPERUSER_PASSWORD = "stack-su-" + uuid.uuid4().hex
MIGRATIONS = ("0001", "0002", "0003", "0004")
SUPERUSER = "admin@example.com"
GRACE = 20  # compose.yaml's stop_grace_period for the app services


def _which_compose(env: dict[str, str]) -> str | None:
    candidate = env.get("PODMAN_COMPOSE")
    if candidate and os.access(candidate, os.X_OK):
        return candidate
    return shutil.which("podman-compose")


@dataclass
class Tools:
    env: dict[str, str]
    compose: str
    timings: dict[str, float] = field(default_factory=dict)

    def podman(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["podman", *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            pytest.fail(f"podman {' '.join(args)} -> {result.returncode}\n{result.stderr[-3000:]}")
        return result


@pytest.fixture(scope="session")
def tools() -> Tools:
    if os.geteuid() != 0:
        pytest.skip("the compose stack needs root for podman's CNI networks: run the tests as root")
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed: run `bash tests/container/setup-podman.sh` as root")
    env = _podman_env()
    compose = _which_compose(env)
    if compose is None:
        pytest.fail("podman-compose is not installed: run `bash tests/container/setup-podman.sh`")
    if not any(Path(d, "dnsname").exists() for d in ("/usr/lib/cni", "/opt/cni/bin")):
        pytest.fail(
            "the CNI plugin dnsname is missing (no DNS on compose networks): "
            "run `bash tests/container/setup-podman.sh`"
        )
    for image in ("docker.io/library/debian:bookworm-slim", env.get("ENTRYKIT_BASE_IMAGE", "")):
        if (
            image
            and subprocess.run(
                ["podman", "image", "exists", image], env=env, check=False
            ).returncode
        ):
            pytest.fail(f"no base image {image}: run `bash tests/container/setup-podman.sh`")
    # What compose.yaml reads from the environment: no Hub (HF_MODELS empty bakes in none),
    # the host's package index if it is one the builder can reach, and its CA bundle.
    for name in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST", "PIP_FIND_LINKS"):
        env.pop(name, None)
    pip_args = _pip_build_args()
    for flag, value in zip(pip_args[::2], pip_args[1::2], strict=True):
        assert flag == "--build-arg"
        name, _, value = value.partition("=")
        env[name] = value
    ca = _ca_bundle()
    env.update(
        BUILDAH_FORMAT="docker",  # else buildah drops the image's HEALTHCHECK
        APP_IMAGE=APP_IMAGE,
        HF_MODELS="",
        BUILD_CA_BUNDLE=str(ca) if ca else "/dev/null",
    )
    return Tools(env, compose)


@dataclass
class Stack:
    """One compose project: compose.yaml + compose.local.yaml + the test's secrets."""

    tools: Tools
    project: str
    files: list[Path]
    env: dict[str, str]

    def compose(
        self, *args: str, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        command = [self.tools.compose, "--project-name", self.project]
        for path in self.files:
            command += ["--file", str(path)]
        result = subprocess.run(
            [*command, *args],
            cwd=COMPOSE_DIR,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            pytest.fail(
                f"podman-compose {' '.join(args)} -> {result.returncode}\n"
                f"{(result.stdout + result.stderr)[-4000:]}\n{self.dump()}"
            )
        return result

    def name(self, service: str, index: int = 1) -> str:
        return f"{self.project}_{service}_{index}"

    def containers(self) -> list[str]:
        listed = self.tools.podman(
            "ps", "--all", "--format", "{{.Names}}",
            "--filter", f"label=io.podman.compose.project={self.project}",
        )  # fmt: skip
        return sorted(listed.stdout.split())

    def logs(self, container: str) -> str:
        result = self.tools.podman("logs", container, check=False)
        return result.stdout + result.stderr

    def dump(self) -> str:
        parts = []
        for container in self.containers():
            state = self.tools.podman(
                "inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", container,
                check=False,
            ).stdout.strip()  # fmt: skip
            parts.append(f"--- {container} ({state})\n{self.logs(container)[-2500:]}")
        return "\n".join(parts)

    def exit_code(self, container: str) -> int:
        state = json.loads(self.tools.podman("inspect", container).stdout)[0]["State"]
        return int(state["ExitCode"])

    def healthy(self, container: str) -> bool:
        # No systemd here, so podman runs no health check timers: run the check ourselves.
        return self.tools.podman("healthcheck", "run", container, check=False).returncode == 0

    def wait_healthy(
        self, containers: list[str], started: float, timeout: float = 120, fail: bool = True
    ) -> float:
        """Seconds from ``started`` until every container passed its health check."""
        pending = list(containers)
        while pending and time.monotonic() - started < timeout:
            for container in list(pending):
                if self.healthy(container):
                    pending.remove(container)
                    continue
                status = self.tools.podman(
                    "inspect", "--format", "{{.State.Status}}", container, check=False
                ).stdout.strip()
                if status not in ("running", "created", "configured", "initialized"):
                    pytest.fail(f"{container} is {status}, not healthy:\n{self.dump()}")
            if pending:
                time.sleep(0.25)
        if pending and fail:
            pytest.fail(f"not healthy after {timeout} s: {pending}\n{self.dump()}")
        return 0.0 if pending else time.monotonic() - started

    def sql(self, query: str) -> list[str]:
        result = self.tools.podman(
            "exec", self.name("db"), "psql", "--username=app", "--dbname=app",
            "--no-psqlrc", "--tuples-only", "--no-align", "--command", query,
        )  # fmt: skip
        return result.stdout.split()

    def remove(self) -> None:
        """`down -v`, then whatever a failed test left of the project."""
        self.compose("--profile", "prod", "down", "--volumes", check=False, timeout=180)
        for container in self.containers():
            self.tools.podman("rm", "--force", "--time", "0", container, check=False)
        self.tools.podman("pod", "rm", "--force", f"pod_{self.project}", check=False)
        for kind in ("volume", "network"):
            for name in self._named(kind):
                self.tools.podman(kind, "rm", "--force", name, check=False)

    def _named(self, kind: str) -> list[str]:
        listed = self.tools.podman(kind, "ls", "--format", "{{.Name}}").stdout.split()
        prefix = "pod_" + self.project if kind == "pod" else self.project + "_"
        return [name for name in listed if name.startswith(prefix)]

    def leftovers(self) -> list[str]:
        """Containers, volumes, networks and the pod of the project that still exist."""
        return self.containers() + [n for k in ("volume", "network", "pod") for n in self._named(k)]


@pytest.fixture(scope="session")
def secrets_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("stack-secrets")
    (folder / "postgres_password").write_text(PASSWORD + "\n")
    (folder / "huggingface_token").write_text("")  # empty: anonymous, no warning
    (folder / "first_superuser_password").write_text(SUPERUSER_PASSWORD + "\n")
    for path in folder.iterdir():
        path.chmod(0o644)  # the app runs as uid 10001: it must be able to read them
    return folder


def _override(folder: Path, secrets_dir: Path, extra: str = "") -> Path:
    path = folder / f"compose.test-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(
        "secrets:\n"
        f"  postgres_password:\n    file: {secrets_dir / 'postgres_password'}\n"
        f"  huggingface_token:\n    file: {secrets_dir / 'huggingface_token'}\n"
        f"  first_superuser_password:\n    file: {secrets_dir / 'first_superuser_password'}\n"
        + extra
    )
    return path


def _make_stack(tools: Tools, secrets_dir: Path, folder: Path, extra: str = "") -> Stack:
    files = [
        COMPOSE_DIR / "compose.yaml",
        COMPOSE_DIR / "compose.local.yaml",
        _override(folder, secrets_dir, extra),
    ]
    env = {**tools.env, "API_PORT": str(free_port())}
    return Stack(tools, f"ekstack{uuid.uuid4().hex[:8]}", files, env)


@pytest.fixture(scope="session")
def built(tools: Tools, secrets_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Tools:
    """`podman-compose build` once: PostgreSQL, Redis and the app image (built by `migrate`)."""
    stack = _make_stack(tools, secrets_dir, tmp_path_factory.mktemp("build"))
    started = time.monotonic()
    result = stack.compose("--profile", "prod", "build", timeout=1200)
    tools.timings["build"] = time.monotonic() - started
    output = result.stdout + result.stderr
    # One build of the app image, not one per service that runs it.
    assert output.count(f"COMMIT {APP_IMAGE}") == 1, output[-3000:]
    config = json.loads(tools.podman("image", "inspect", APP_IMAGE).stdout)[0]
    health = config.get("Healthcheck") or config["Config"].get("Healthcheck")
    assert health and health["Test"] == ["CMD", "entrykit", "healthcheck"], "BUILDAH_FORMAT?"
    # HF_MODELS= (empty) reached the build as empty: no model baked in, none checked at start.
    env = dict(item.split("=", 1) for item in config["Config"]["Env"])
    assert env["ENTRYKIT_HF_MODELS"] == "", env
    return tools


@pytest.fixture
def stack(built: Tools, secrets_dir: Path, tmp_path: Path) -> Iterator[Stack]:
    stack = _make_stack(built, secrets_dir, tmp_path)
    try:
        yield stack
    finally:
        stack.remove()


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def _wait_for_log(stack: Stack, container: str, needle: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        logs = stack.logs(container)
        if needle in logs:
            return logs
        time.sleep(0.25)
    pytest.fail(f"no {needle!r} in {container}'s log:\n{stack.dump()}")


# --- tests -------------------------------------------------------------------------------


def test_stack_up_serves_works_through_redis_stops_restarts_and_goes(
    stack: Stack, built: Tools
) -> None:
    db, redis, migrate = stack.name("db"), stack.name("redis"), stack.name("migrate")
    api, worker = stack.name("api"), stack.name("worker")

    started = time.monotonic()
    stack.compose("--profile", "prod", "up", "--detach", "--no-deps")
    assert stack.containers() == sorted([db, redis, migrate, api, worker])
    built.timings["up to healthy"] = stack.wait_healthy([api, db, redis], started)
    # The worker's heartbeat check (`entrykit healthcheck --file`), once its loop runs.
    built.timings["worker healthy"] = stack.wait_healthy([worker], started, timeout=180)

    # The one-shot migration ran once, exited 0, and its health check is off.
    deadline = time.monotonic() + 60
    while (
        stack.tools.podman("inspect", "--format", "{{.State.Status}}", migrate).stdout.strip()
        != "exited"
    ):
        assert time.monotonic() < deadline, stack.dump()
        time.sleep(0.25)
    assert stack.exit_code(migrate) == 0, stack.dump()
    config = json.loads(stack.tools.podman("inspect", migrate).stdout)[0]["Config"]
    assert config["Healthcheck"]["Test"] == ["NONE"]  # healthcheck: disable: true
    migrate_log = stack.logs(migrate)
    assert "applied 0001, 0002, 0003, 0004" in migrate_log, migrate_log
    assert stack.sql("SELECT version_num FROM alembic_version") == ["0004"]
    nobody = "initial-data | FIRST_SUPERUSER is not set: no first superuser to create"
    for container in (api, worker):  # ENTRYKIT_MIGRATE=wait: waited, never migrated
        assert "Running upgrade" not in stack.logs(container)
        assert nobody in stack.logs(container)  # the initial data ran, and had no one to create
    assert stack.sql("SELECT count(*) FROM users") == ["0"]

    # The worker waited for Redis with ENTRYKIT_WAIT_FOR, as for the database.
    worker_log = stack.logs(worker)
    waited_for_redis = any(
        " wait " in line and "redis" in line and "ready" in line for line in worker_log.splitlines()
    )
    assert waited_for_redis, f"the worker did not wait for Redis:\n{worker_log}"

    # The API serves, on the published port, the tables the migration made.
    base = f"http://127.0.0.1:{stack.env['API_PORT']}"
    assert _get(f"{base}/healthz") == {"status": "ok"}
    assert _get(f"{base}/readyz") == {"status": "ready", "revision": "0004"}

    # A job through Redis: the worker takes the message, stores the note, does its job.
    body = "through redis " + uuid.uuid4().hex[:6]
    message = json.dumps({"note": body})
    before = _get(f"{base}/notes")
    stack.tools.podman("exec", redis, "redis-cli", "LPUSH", "jobs", message)
    _wait_for_log(stack, worker, "queue: note")
    notes = _get(f"{base}/notes")
    added = [row for row in notes["rows"] if row["body"] == body]
    assert len(added) == 1 and len(notes["rows"]) == len(before["rows"]) + 1, notes
    note = added[0]["id"]
    _wait_for_log(stack, worker, f"queue: note {note} stored")
    _wait_for_log(stack, worker, f"done (note {note})")
    assert _get(f"{base}/notes")["jobs"].get("queued", 0) == 0
    assert stack.tools.podman("exec", redis, "redis-cli", "LLEN", "jobs").stdout.strip() == "0"

    # The password is in no log and in no container's configuration.
    for container in stack.containers():
        assert PASSWORD not in stack.logs(container), container
        assert PASSWORD not in stack.tools.podman("inspect", container).stdout, container

    # stop: SIGTERM (SIGINT for PostgreSQL) reaches each PID 1; all exit 0 within the grace.
    started = time.monotonic()
    stack.compose("--profile", "prod", "stop")
    stop_seconds = time.monotonic() - started
    built.timings["stop"] = stop_seconds
    for container in (db, redis, api, worker):
        assert stack.exit_code(container) == 0, f"{container}\n{stack.dump()}"
    assert stop_seconds < GRACE, f"stop took {stop_seconds:.1f} s: SIGKILL?"
    assert "Finished server process" in stack.logs(api)
    assert "stopped cleanly" in stack.logs(worker)

    # up again: the database is at head, so `migrate` has nothing to do.
    started = time.monotonic()
    stack.compose("--profile", "prod", "up", "--detach", "--no-deps")
    built.timings["restart to healthy"] = stack.wait_healthy([api], started)
    stack.wait_healthy([worker], started, timeout=180)
    _wait_for_log(stack, migrate, "nothing to do")
    assert stack.logs(migrate).count("applied 0001") == 1
    assert stack.sql("SELECT count(*) FROM notes") == [str(len(notes["rows"]))]

    # down -v: nothing of the project is left, the database volume included.
    stack.compose("--profile", "prod", "down", "--volumes", timeout=180)
    assert stack.leftovers() == []
    print(
        "\nstack timings: "
        + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in built.timings.items())
    )


def test_three_api_replicas_migrating_a_fresh_database_run_each_migration_once(
    built: Tools, secrets_dir: Path, tmp_path: Path
) -> None:
    """No `migrate` service: three replicas with ENTRYKIT_MIGRATE=1 start together, while the
    database initialises; entrykit's advisory lock lets one migrate, the others find head.
    With FIRST_SUPERUSER set, the initial data (its password from the secret file the app's
    entrykit.toml lists) creates the user once, under the lock `initial-data`."""
    stack = _make_stack(
        built,
        secrets_dir,
        tmp_path,
        extra=(
            "services:\n"
            "  api:\n"
            "    scale: 3\n"
            '    environment:\n      ENTRYKIT_MIGRATE: "1"\n'
            f"      FIRST_SUPERUSER: {SUPERUSER}\n"
            "    ports: !reset []\n"  # three replicas cannot share one host port
        ),
    )
    try:
        started = time.monotonic()
        stack.compose("--profile", "prod", "up", "--detach", "--no-deps", "db", "api")
        replicas = [stack.name("api", i) for i in (1, 2, 3)]
        assert stack.containers() == sorted([stack.name("db"), *replicas])
        built.timings["3 replicas to healthy"] = stack.wait_healthy(replicas, started)

        assert stack.sql("SELECT version_num FROM alembic_version") == ["0004"]
        tables = "SELECT count(*) FROM pg_tables WHERE tablename IN ('notes', 'jobs', 'users')"
        assert stack.sql(tables) == ["3"]
        logs = {replica: stack.logs(replica) for replica in replicas}
        everything = "\n".join(logs.values())
        for revision in MIGRATIONS:  # Alembic's own line, once per revision in all three
            assert everything.count(f"-> {revision},") == 1, everything
        migrated = [r for r, log in logs.items() if "applied 0001, 0002, 0003, 0004" in log]
        assert len(migrated) == 1, everything
        for replica, log in logs.items():
            if replica not in migrated:
                assert "nothing to do" in log or "another replica migrated" in log, log
        created = f"initial-data | created the first superuser {SUPERUSER}"
        assert everything.count(created) == 1, everything
        assert everything.count(f"first superuser {SUPERUSER} already there") == 2, everything
        assert stack.sql("SELECT email FROM users WHERE is_superuser") == [SUPERUSER]
        for log in logs.values():
            assert PASSWORD not in log
            assert SUPERUSER_PASSWORD not in log
        stack.compose("--profile", "prod", "down", "--volumes", timeout=180)
        assert stack.leftovers() == []
    finally:
        stack.remove()


@pytest.mark.parametrize("mode", [0o644, 0o600])
def test_secret_file_mode_decides_whether_the_app_user_can_read_it(
    built: Tools, tmp_path: Path, mode: int
) -> None:
    """compose bind-mounts secret files as they are: uid 10001 needs 0644 (or to own it)."""
    secret = tmp_path / "postgres_password"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(mode)
    result = built.podman(
        "run", "--rm", "--no-healthcheck", "--network", "none",
        "--volume", f"{secret}:/run/secrets/postgres_password:ro",
        "--env", "ENTRYKIT_SECRETS=PGPASSWORD=postgres_password",
        APP_IMAGE, "secrets",
        check=False,
    )  # fmt: skip
    assert PASSWORD not in result.stdout + result.stderr
    if mode == 0o644:
        assert result.returncode == 0, result.stderr
        return
    assert result.returncode == 11, result.stderr
    message = result.stderr.lower()
    assert "postgres_password" in message
    assert "10001" in message or "app" in message, result.stderr  # which user it runs as
    assert "mode" in message or "owner" in message or "permission" in message, result.stderr
