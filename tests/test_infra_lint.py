"""The container set-up, checked without a container engine.

- ``infra/docker/Dockerfile``: hadolint clean, and the properties the image promises
  (token only as a BuildKit secret, non-root, entrykit as entrypoint and health check).
- ``infra/docker/compose.yaml``: valid against the compose-spec schema (the copy that
  check-jsonschema ships, so no network), and wired as documented.
- ``examples/kubernetes/*.yaml``: valid against the Kubernetes schemas that
  kubernetes-validate ships, in strict mode, and wired as documented.
- The example app and worker, run as real processes.

Each linter is also shown a broken file, so a linter that silently checks nothing fails here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from entrykit_process import ENTRYKIT, clean_env
from hub_fixtures import LocalHub, hub_env
from postgres_fixtures import PostgresServer, free_port

from entrykit import errors

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "infra" / "docker" / "Dockerfile"
COMPOSE = ROOT / "infra" / "docker" / "compose.yaml"
KUBERNETES = ROOT / "examples" / "kubernetes"
APP_DIR = ROOT / "examples" / "fastapi-app"
DJANGO_DIR = ROOT / "examples" / "django-app"
# Every Dockerfile built from the repository root, so filtered by its .dockerignore.
ROOT_CONTEXT_DOCKERFILES = [DOCKERFILE, DJANGO_DIR / "Dockerfile"]
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    path = shutil.which(name, path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if path is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[test]'")
    return path


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(arg) for arg in args], capture_output=True, text=True, timeout=120, check=False
    )


# --- Dockerfile ------------------------------------------------------------------------


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    pairs = []
    for text in logical:
        keyword, _, rest = text.partition(" ")
        pairs.append((keyword.upper(), rest.strip()))
    return pairs


def test_hadolint_passes_the_dockerfile() -> None:
    result = _run(_tool("hadolint"), "--no-color", "--failure-threshold", "info", DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_hadolint_flags_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nARG HF_TOKEN\nRUN pip install fastapi\nCMD uvicorn app:app\n")
    result = _run(_tool("hadolint"), "--no-color", bad)
    assert result.returncode != 0
    for rule in ("DL3006", "DL3013", "DL3042", "DL3025"):
        assert rule in result.stdout, result.stdout


def test_dockerfile_is_multi_stage_from_the_slim_python_base() -> None:
    steps = _instructions(DOCKERFILE)
    base_args = [rest for kw, rest in steps if kw == "ARG" and rest.startswith("PYTHON_IMAGE=")]
    assert base_args == ["PYTHON_IMAGE=docker.io/library/python:3.11-slim-bookworm"]
    stages = [rest for kw, rest in steps if kw == "FROM"]
    assert len(stages) >= 3
    assert stages[0].startswith("${PYTHON_IMAGE} AS ")
    assert stages[-1] == "${PYTHON_IMAGE} AS runtime"


def test_dockerfile_takes_the_hub_token_only_as_a_build_secret() -> None:
    steps = _instructions(DOCKERFILE)
    for keyword, rest in steps:
        if keyword in ("ARG", "ENV", "LABEL"):
            assert not re.search(r"TOKEN|PASSWORD|SECRET", rest, re.I), (keyword, rest)
    prefetch = [rest for kw, rest in steps if kw == "RUN" and "entrykit prefetch" in rest]
    assert len(prefetch) == 1
    assert (
        "--mount=type=secret,id=huggingface_token,"
        "target=/run/secrets/huggingface_token" in prefetch[0]
    )
    pip_runs = [rest for kw, rest in steps if kw == "RUN" and "pip install" in rest]
    assert pip_runs and all("--mount=type=secret,id=ca_bundle" in run for run in pip_runs)
    assert "--mount=type=secret,id=ca_bundle" in prefetch[0]  # the Hub behind a TLS proxy
    assert any("/src/entrykit[redis]" in run for run in pip_runs)  # ENTRYKIT_WAIT_FOR=redis://
    args = {rest.split("=", 1)[0] for kw, rest in steps if kw == "ARG"}
    assert {"PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_TRUSTED_HOST"} <= args
    assert {"HF_MODELS", "HF_ENDPOINT"} <= args


def test_dockerfile_runtime_is_offline_non_root_and_started_by_entrykit() -> None:
    steps = _instructions(DOCKERFILE)
    last_from = max(i for i, (kw, _) in enumerate(steps) if kw == "FROM")
    runtime = steps[last_from:]
    env = " ".join(rest for kw, rest in runtime if kw == "ENV")
    assert "HF_HUB_OFFLINE=1" in env
    assert "ENTRYKIT_HF_OFFLINE=1" in env
    assert "HF_HOME=/var/cache/huggingface" in env
    users = [rest for kw, rest in runtime if kw == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert ("ENTRYPOINT", '["entrykit"]') in runtime
    commands = [json.loads(rest) for kw, rest in runtime if kw == "CMD"]
    assert commands and commands[-1][0] == "uvicorn"
    health = [rest for kw, rest in runtime if kw == "HEALTHCHECK"]
    assert len(health) == 1 and health[0].endswith('CMD ["entrykit", "healthcheck"]')
    # Nothing from the build stages' tooling: no pip cache, no compiler, no secrets mounted.
    assert not [rest for kw, rest in runtime if kw == "RUN" and "--mount" in rest]


def test_dockerignore_keeps_the_build_context_to_what_the_image_needs() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "allow-list: ignore everything, then re-include"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = set()
    for dockerfile in ROOT_CONTEXT_DOCKERFILES:
        for keyword, rest in _instructions(dockerfile):
            if keyword == "COPY" and "--from=" not in rest:
                copied.update(rest.split()[:-1])
    assert "examples/django-app/" in copied  # built from the root: entrykit from its source
    for source in copied:
        assert any(source.rstrip("/") == a or source.startswith(a + "/") for a in allowed), source
    assert not any(a.startswith(("infra", "tests", ".git")) for a in allowed)
    # What local runs leave inside the allowed folders (`pip install . ./examples/fastapi-app`
    # builds in place): excluded after the allow-list, so later lines win.
    last_allowed = max(i for i, line in enumerate(lines) if line.startswith("!"))
    excluded = lines[last_allowed + 1 :]
    for left_behind in ("**/build/", "**/dist/", "**/*.egg-info/", "**/secrets/", "**/.venv/"):
        assert left_behind in excluded, left_behind


# --- compose ---------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text())  # resolves the x-app anchors and merges
    assert isinstance(loaded, dict)
    return loaded


def _check_compose(path: Path) -> subprocess.CompletedProcess[str]:
    return _run(
        _tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", "--no-cache", path
    )


def test_compose_file_matches_the_compose_spec_schema() -> None:
    result = _check_compose(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_schema_check_rejects_a_broken_file(tmp_path: Path) -> None:
    broken = _compose()
    broken["services"]["api"]["depends_on"]["migrate"]["condition"] = "service_finished"
    broken["services"]["worker"]["stop_grace_period"] = {"seconds": 20}
    path = tmp_path / "compose.yaml"
    path.write_text(yaml.safe_dump(broken))
    result = _check_compose(path)
    assert result.returncode != 0
    assert "service_finished" in result.stdout + result.stderr


def test_compose_stack_orders_db_migrate_api_and_worker() -> None:
    services = _compose()["services"]
    assert services["db"]["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    # Over TCP: the first start's set-up server listens on the socket only.
    assert "--host=127.0.0.1" in services["db"]["healthcheck"]["test"]
    migrate = services["migrate"]
    assert migrate["command"] == ["migrate"]
    assert migrate["depends_on"]["db"]["condition"] == "service_healthy"
    assert "profiles" not in migrate  # runs under every profile
    assert migrate["healthcheck"] == {"disable": True}  # a one-shot job serves no HTTP
    for name in ("api", "api-dev", "worker"):
        service = services[name]
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert service["environment"]["ENTRYKIT_MIGRATE"] == "wait", name
    assert services["api"]["profiles"] == ["prod"]
    assert services["api-dev"]["profiles"] == ["dev"]
    assert set(services["worker"]["profiles"]) == {"dev", "prod"}
    assert "--reload" in services["api-dev"]["command"]
    assert "--reload" not in services["api"].get("command", [])
    assert services["api"]["healthcheck"]["test"] == ["CMD", "entrykit", "healthcheck"]
    assert services["worker"]["command"] == ["python", "-m", "worker"]


def test_compose_builds_the_app_image_once() -> None:
    """podman-compose builds every service that has a `build:`, in parallel: only `migrate`
    (in every profile) has one; the others run its image and never pull it."""
    services = _compose()["services"]
    app_image = services["migrate"]["image"]
    building = [name for name, service in services.items() if "build" in service]
    assert building == ["migrate"]
    for name in ("api", "api-dev", "worker"):
        assert services[name]["image"] == app_image
        assert services[name]["pull_policy"] == "never", name
    args = services["migrate"]["build"]["args"]
    # ${VAR-default}: an empty HF_MODELS bakes in no model (${VAR:-default} would not).
    assert args["HF_MODELS"].startswith("${HF_MODELS-") and ":-" not in args["HF_MODELS"]
    assert args["HF_INCLUDE"].startswith("${HF_INCLUDE-")
    assert {"HF_ENDPOINT", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST"} <= set(args)
    assert services["migrate"]["build"]["secrets"] == ["huggingface_token", "ca_bundle"]
    dockerfile_args = {
        rest.split("=", 1)[0] for kw, rest in _instructions(DOCKERFILE) if kw == "ARG"
    }
    assert set(args) <= dockerfile_args


def test_compose_worker_waits_for_redis_and_is_checked_by_its_heartbeat() -> None:
    services = _compose()["services"]
    worker = services["worker"]
    env = worker["environment"]
    assert urlsplit(env["ENTRYKIT_WAIT_FOR"]).scheme == "redis"
    assert urlsplit(env["ENTRYKIT_WAIT_FOR"]).hostname == "redis"
    assert env["REDIS_URL"] == env["ENTRYKIT_WAIT_FOR"]
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    test = worker["healthcheck"]["test"]
    assert test[:4] == ["CMD", "entrykit", "healthcheck", "--file"]
    assert test[4] == env["WORKER_HEARTBEAT"]
    assert test[test.index("--max-age") + 1] == "30"
    assert env["WORKER_HEARTBEAT"].startswith("/tmp/")  # the tmpfs of a read-only container
    assert "/tmp" in worker["tmpfs"] and worker["read_only"] is True
    redis = services["redis"]
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert "ports" not in redis  # the stack's own queue


def test_compose_local_override_builds_postgres_and_redis_from_debian() -> None:
    local = yaml.safe_load((COMPOSE.parent / "compose.local.yaml").read_text())["services"]
    assert set(local) == {"db", "redis"}
    for name, service in local.items():
        assert service["image"].startswith("localhost/"), name
        assert service["pull_policy"] == "never"
        context = COMPOSE.parent / service["build"]["context"]
        dockerfile = (context / "Dockerfile").read_text()
        assert "ARG DEBIAN_IMAGE=docker.io/library/debian:bookworm-slim" in dockerfile
        assert "apt-get install" in dockerfile
    entrypoint = (COMPOSE.parent / "postgres" / "docker-entrypoint.sh").read_text()
    for name in ("POSTGRES_USER", "POSTGRES_DB", "POSTGRES_PASSWORD_FILE"):
        assert name.removesuffix("_FILE") in entrypoint
    assert "--pwfile=<(" in entrypoint  # the password never in argv


@pytest.mark.parametrize("name", ["postgres", "redis"])
def test_hadolint_passes_the_stack_service_dockerfiles(name: str) -> None:
    path = COMPOSE.parent / name / "Dockerfile"
    result = _run(_tool("hadolint"), "--no-color", "--failure-threshold", "info", path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_secrets_are_files_with_example_templates() -> None:
    compose = _compose()
    for name, secret in compose["secrets"].items():
        if name == "ca_bundle":  # build only, optional: a path from the environment
            assert secret["file"] == "${BUILD_CA_BUNDLE:-/dev/null}"
            continue
        path = (COMPOSE.parent / secret["file"]).resolve()
        assert path.parent == COMPOSE.parent / "secrets"
        assert path.with_name(path.name + ".example").is_file(), name
    assert {"huggingface_token", "postgres_password", "first_superuser_password"} <= set(
        compose["secrets"]
    )
    services = compose["services"]
    assert services["db"]["environment"]["POSTGRES_PASSWORD_FILE"] == (
        "/run/secrets/postgres_password"
    )
    assert "huggingface_token" in services["api-dev"]["secrets"]
    assert "huggingface_token" in services["migrate"]["build"]["secrets"]
    # No secret value written into the file: only *_FILE paths and secret names.
    for name, service in services.items():
        environment = service.get("environment") or {}
        for key, value in environment.items():
            if re.search(r"PASSWORD|TOKEN", key) and not key.endswith("_FILE"):
                pytest.fail(f"{name}: {key}={value} puts a secret in the environment")
        if "DATABASE_URL" in environment:
            assert urlsplit(environment["DATABASE_URL"]).password is None, name
            # The app's entrykit.toml lists the secrets; ENTRYKIT_SECRETS would replace it.
            assert "ENTRYKIT_SECRETS" not in environment, name
            assert set(_toml_secret_files()) <= set(service["secrets"]), name
    env_template = (COMPOSE.parent / "stack.env.example").read_text()
    assert not re.search(r"^[A-Z_]*(PASSWORD|TOKEN)=", env_template, re.M)


def test_compose_has_a_named_model_cache_volume_at_hf_home() -> None:
    compose = _compose()
    assert "hf-cache" in compose["volumes"]
    assert "hf-cache:/var/cache/huggingface" in compose["services"]["api-dev"]["volumes"]
    assert compose["services"]["api-dev"]["environment"]["HF_HUB_OFFLINE"] == "0"


def _env_file(path: Path) -> dict[str, str]:
    """The assignments of a compose env_file (comments and blank lines skipped)."""
    pairs = (line.split("=", 1) for line in path.read_text().splitlines())
    return {pair[0]: pair[1] for pair in pairs if len(pair) == 2 and not pair[0].startswith("#")}


def test_stack_env_downloads_nothing_into_a_read_only_service() -> None:
    """stack.env feeds every app service; `api` and `worker` have a read-only root and no
    volume at HF_HOME, so a run-time download there would be exit 40."""
    settings = _env_file(COMPOSE.parent / "stack.env.example")
    assert settings.get("HF_HUB_OFFLINE", "1") != "0"
    assert "ENTRYKIT_HF_MODELS" not in settings
    services = _compose()["services"]
    for name in ("api", "worker"):
        assert services[name]["read_only"] is True
        mounts = [v.split(":")[1] for v in services[name].get("volumes", [])]
        assert "/var/cache/huggingface" not in mounts, name
    # The override it shows for downloading in `api` instead: valid YAML that gives `api`
    # what `api-dev` has (the volume at HF_HOME, the token) and keeps the database secrets.
    template = (COMPOSE.parent / "stack.env.example").read_text().splitlines()
    start = template.index("#   services:")
    snippet = []
    for line in template[start:]:
        if not line.startswith("#   "):
            break
        snippet.append(line[len("#   ") :])
    api = yaml.safe_load("\n".join(snippet))["services"]["api"]
    dev = services["api-dev"]
    assert api["environment"]["HF_HUB_OFFLINE"] == dev["environment"]["HF_HUB_OFFLINE"] == "0"
    assert "hf-cache:/var/cache/huggingface" in api["volumes"]
    assert sorted(api["secrets"]) == sorted(dev["secrets"])


# --- the secrets every container loads ---------------------------------------------------


def _toml_secret_files() -> dict[str, str]:
    """The app's entrykit.toml `secrets`, as {file name: variable}."""
    entries = tomllib.loads((APP_DIR / "entrykit.toml").read_text())["secrets"]
    found = {}
    for entry in entries:
        variable, _, file = entry.rstrip("?").partition("=")
        found[file or variable.lower()] = variable
    assert found, "the example loads its database password from a secret file"
    return found


def _plan(env: dict[str, str], command: list[str], where: str) -> dict[str, Any]:
    """`entrykit plan --format json` with ``env``, in the image's working directory."""
    result = subprocess.run(
        [*ENTRYKIT, "plan", "--format", "json", *command],
        cwd=APP_DIR,
        env={"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"{where}: {result.stderr}"
    plan: dict[str, Any] = json.loads(result.stdout)
    return plan


def _assert_loads_every_secret_the_app_lists(plan: dict[str, Any], where: str) -> None:
    assert plan["secret_error"] is None, f"{where}: {plan['secret_error']}"
    loaded = {secret["name"] for secret in plan["secrets"]}
    # With ENTRYKIT_SECRETS=PGPASSWORD=postgres_password in the environment, as the compose
    # file and the ConfigMap once had, FIRST_SUPERUSER_PASSWORD is missing here and the
    # initial data stops the start with exit 50.
    assert set(_toml_secret_files().values()) <= loaded, f"{where}: loads only {loaded}"


def test_every_compose_app_service_loads_every_secret_the_app_lists(tmp_path: Path) -> None:
    """`entrykit plan` with each app service's environment (stack.env.example and its own),
    and the secret files compose mounts for it."""
    compose = _compose()
    stack_env = _env_file(COMPOSE.parent / "stack.env.example")
    checked = []
    for name, service in compose["services"].items():
        if service.get("image") != compose["services"]["migrate"]["image"]:
            continue  # PostgreSQL, Redis
        secrets_dir = tmp_path / name
        secrets_dir.mkdir()
        for secret in service["secrets"]:
            (secrets_dir / secret).write_text(f"value of {secret}\n")
        env = {**stack_env, **service["environment"], "ENTRYKIT_SECRETS_DIR": str(secrets_dir)}
        command = service.get("command", ["uvicorn", "app.main:app"])
        plan = _plan(env, [] if command == ["migrate"] else ["--", *command], name)
        _assert_loads_every_secret_the_app_lists(plan, name)
        checked.append(name)
    assert sorted(checked) == ["api", "api-dev", "migrate", "worker"]


def test_pulled_images_are_fully_qualified() -> None:
    """podman resolves a short name (postgres:16) only through unqualified-search registries,
    which Debian 12's /etc/containers/registries.conf does not set: "short-name did not
    resolve". An image that is pulled names its registry."""

    def qualified(image: str) -> bool:
        first, _, rest = image.partition("/")
        return bool(rest) and ("." in first or ":" in first or first == "localhost")

    pulled = []
    for path in (COMPOSE, COMPOSE.parent / "compose.local.yaml", DJANGO_DIR / "compose.yaml"):
        for name, service in yaml.safe_load(path.read_text())["services"].items():
            if "build" not in service and service.get("pull_policy") != "never":
                pulled.append((f"{path.name}:{name}", service["image"]))
    for name, doc in _manifests().items():
        if doc["kind"] not in ("Job", "Deployment"):
            continue
        for container in _pod_spec(doc).get("initContainers", []) + _pod_spec(doc)["containers"]:
            pulled.append((name, container["image"]))
    dockerfiles = [*ROOT_CONTEXT_DOCKERFILES, *COMPOSE.parent.glob("*/Dockerfile")]
    for dockerfile in dockerfiles:
        steps = _instructions(dockerfile)
        defaults = dict(rest.split("=", 1) for kw, rest in steps if kw == "ARG" and "=" in rest)
        stages = set()
        for keyword, rest in steps:
            if keyword == "FROM":
                image, *alias = rest.split()
                if image not in stages:  # an earlier stage is no image to pull
                    image = defaults.get(image.strip("${}"), image)
                    pulled.append((str(dockerfile.relative_to(ROOT)), image))
                stages.update(alias[1:])  # FROM IMAGE AS NAME
    assert {image for _, image in pulled} >= {
        "docker.io/library/postgres:16-bookworm",
        "docker.io/library/redis:7-bookworm",
        "docker.io/library/python:3.11-slim-bookworm",
        "docker.io/library/debian:bookworm-slim",
    }
    short = [(where, image) for where, image in pulled if not qualified(image)]
    assert short == []
    assert not qualified("postgres:16-bookworm") and not qualified("library/redis:7")


# --- Kubernetes ------------------------------------------------------------------------


def _manifests() -> dict[str, dict[str, Any]]:
    found = {}
    for path in sorted(KUBERNETES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            found[f"{path.name}:{doc['kind']}/{doc['metadata']['name']}"] = doc
    return found


def _pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = doc["spec"]["template"]["spec"]
    return spec


def _app_image() -> str:
    job = next(doc for doc in _manifests().values() if doc["kind"] == "Job")
    image: str = _pod_spec(job)["containers"][0]["image"]
    return image


def _app_workloads() -> dict[str, dict[str, Any]]:
    """The Job and Deployments that run the example's image (not Redis)."""
    image = _app_image()
    return {
        name: doc
        for name, doc in _manifests().items()
        if doc["kind"] in ("Job", "Deployment")
        and any(c["image"] == image for c in _pod_spec(doc)["containers"])
    }


def test_kubernetes_manifests_are_valid() -> None:
    paths = sorted(KUBERNETES.glob("*.yaml"))
    assert len(paths) >= 5
    result = _run(_tool("kubernetes-validate"), "--strict", "--no-warn", *paths)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == len(_manifests()), result.stdout


def test_kubernetes_validate_rejects_a_broken_manifest(tmp_path: Path) -> None:
    job = next(doc for doc in _manifests().values() if doc["kind"] == "Job")
    job["spec"]["podFailurePolicy"]["rules"][0]["onExitCodes"]["operator"] = "Within"
    job["spec"]["template"]["spec"]["containers"][0]["restartPolicyy"] = "Never"
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    result = _run(_tool("kubernetes-validate"), "--strict", "--no-warn", path)
    assert result.returncode != 0, result.stdout


def test_migration_job_fails_at_once_on_permanent_exit_codes() -> None:
    jobs = [doc for doc in _manifests().values() if doc["kind"] == "Job"]
    assert len(jobs) == 1
    spec = jobs[0]["spec"]
    assert spec["backoffLimit"] == 0
    assert _pod_spec(jobs[0])["restartPolicy"] == "Never"
    assert _pod_spec(jobs[0])["containers"][0]["args"] == ["migrate"]
    rules = spec["podFailurePolicy"]["rules"]
    fail = [r for r in rules if r["action"] == "FailJob" and "onExitCodes" in r]
    assert fail and fail[0]["onExitCodes"]["operator"] == "In"
    codes = set(fail[0]["onExitCodes"]["values"])
    permanent = {
        errors.EXIT_USAGE,
        errors.EXIT_CONFIG,
        errors.EXIT_SECRET,
        errors.EXIT_DB_REFUSED,
        errors.EXIT_MIGRATION_FAILED,
        errors.EXIT_UNKNOWN_REVISION,
        errors.EXIT_REPO_REFUSED,
        errors.EXIT_NOT_FOUND,
    }
    assert permanent <= codes
    transient = {errors.EXIT_NOT_READY, errors.EXIT_MIGRATION_LOCK_TIMEOUT}
    assert not transient & codes
    assert any(
        r["action"] == "Ignore" and r["onPodConditions"][0]["type"] == "DisruptionTarget"
        for r in rules
    )


def test_kubernetes_pods_read_secrets_from_files_outside_run_secrets() -> None:
    configmap = next(doc for doc in _manifests().values() if doc["kind"] == "ConfigMap")
    secrets_dir = configmap["data"]["ENTRYKIT_SECRETS_DIR"]
    assert not secrets_dir.startswith(("/run/secrets", "/var/run/secrets"))
    for name, doc in _manifests().items():
        if doc["kind"] in ("Job", "Deployment"):
            assert _pod_spec(doc)["securityContext"]["runAsNonRoot"] is True, name
    for name, doc in _app_workloads().items():
        pod = _pod_spec(doc)
        secret_volumes = {v["name"] for v in pod["volumes"] if "secret" in v}
        for container in pod.get("initContainers", []) + pod["containers"]:
            mounts = container["volumeMounts"]
            for mount in mounts:
                assert not mount["mountPath"].startswith(("/run/secrets", "/var/run/secrets"))
            assert [m["mountPath"] for m in mounts if m["name"] in secret_volumes] == [
                secrets_dir
            ], name
            assert {"configMapRef": {"name": configmap["metadata"]["name"]}} in container["envFrom"]
            assert not any("value" in e and "PASSWORD" in e["name"] for e in container["env"])


def test_kubernetes_replicas_wait_for_head_and_probe_through_entrykit() -> None:
    deployments = [doc for doc in _app_workloads().values() if doc["kind"] == "Deployment"]
    assert len(deployments) >= 2
    for doc in deployments:
        for container in _pod_spec(doc)["containers"]:
            env = {e["name"]: e.get("value") for e in container["env"]}
            assert env["ENTRYKIT_MIGRATE"] == "wait"
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                if probe in container:
                    assert container[probe]["exec"]["command"][:2] == ["entrykit", "healthcheck"]
    apis = [doc for doc in deployments if doc["metadata"]["name"] == "example-api"]
    assert len(apis) == 2  # baked-in models, and an init container that prefetches
    init = [doc for doc in apis if "initContainers" in _pod_spec(doc)]
    assert len(init) == 1
    prefetch = _pod_spec(init[0])["initContainers"][0]
    assert prefetch["args"] == ["prefetch"]
    cache_mounts = {
        m["mountPath"]
        for c in [prefetch, *_pod_spec(init[0])["containers"]]
        for m in c["volumeMounts"]
        if m["name"] == "hf-cache"
    }
    assert cache_mounts == {"/var/cache/huggingface"}


def test_kubernetes_worker_waits_for_redis_and_is_probed_by_its_heartbeat() -> None:
    manifests = _manifests()
    redis_service = manifests["redis.yaml:Service/redis"]
    redis_port = redis_service["spec"]["ports"][0]["port"]
    worker = _pod_spec(manifests["worker.yaml:Deployment/example-worker"])["containers"][0]
    env = {e["name"]: e.get("value") for e in worker["env"]}
    url = urlsplit(env["ENTRYKIT_WAIT_FOR"])
    assert (url.scheme, url.hostname, url.port) == ("redis", "redis", redis_port)
    assert env["REDIS_URL"] == env["ENTRYKIT_WAIT_FOR"]
    for probe in ("startupProbe", "livenessProbe"):
        command = worker[probe]["exec"]["command"]
        assert command[:4] == ["entrykit", "healthcheck", "--file", env["WORKER_HEARTBEAT"]]
    assert any(m["mountPath"] == "/tmp" for m in worker["volumeMounts"])  # read-only root
    redis = manifests["redis.yaml:Deployment/redis"]
    assert redis["spec"]["selector"]["matchLabels"] == redis_service["spec"]["selector"]


def test_entrykit_plan_accepts_every_containers_environment(tmp_path: Path) -> None:
    """`entrykit plan` with each app container's env (ConfigMap + its own), in the image's
    working directory (the app's entrykit.toml): a setting entrykit rejects is exit 10 here,
    not a CrashLoopBackOff after the rollout; and every secret the app lists is loaded from
    the Secret's keys."""
    manifests = _manifests()
    configmap = next(doc for doc in manifests.values() if doc["kind"] == "ConfigMap")
    secret = next(doc for doc in manifests.values() if doc["kind"] == "Secret")
    secrets_dir = tmp_path / "secrets"  # the Secret's keys, as the kubelet mounts them
    secrets_dir.mkdir()
    for key, value in secret["stringData"].items():
        (secrets_dir / key).write_text(value)
    checked = 0
    for name, doc in _app_workloads().items():
        pod = _pod_spec(doc)
        for container in pod.get("initContainers", []) + pod["containers"]:
            env = {
                **configmap["data"],
                **{e["name"]: e["value"] for e in container.get("env", []) if "value" in e},
            }
            assert env["ENTRYKIT_SECRETS_DIR"] == "/etc/secrets"
            env["ENTRYKIT_SECRETS_DIR"] = str(secrets_dir)
            args = container.get("args", [])
            # A subcommand (migrate, prefetch) plans the configured steps; a program is the
            # command `run` would exec after them.
            command = [] if not args or args[0] in ("migrate", "prefetch") else ["--", *args]
            where = f"{name} container {container['name']}"
            plan = _plan(env, command, where)
            _assert_loads_every_secret_the_app_lists(plan, where)
            settings = {s["name"]: s for s in plan["settings"]}
            assert settings["secrets_dir"]["value"] == str(secrets_dir)
            log_format = settings["log_format"]
            assert (log_format["value"], log_format["source"]) == ("json", "env")
            if "ENTRYKIT_MIGRATE" in env:
                assert settings["migrate"]["value"] == env["ENTRYKIT_MIGRATE"], where
            if "ENTRYKIT_WAIT_FOR" in env:
                assert any("redis://" in step for step in plan["steps"]), where
            checked += 1
    assert checked >= 5  # the Job, two API variants (one with an init container), the worker


# --- the example app and worker as real processes ----------------------------------------


def _wait_for_line(proc: subprocess.Popen[str], needle: str, timeout: float) -> list[str]:
    assert proc.stderr is not None
    os.set_blocking(proc.stderr.fileno(), False)
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if line:
            seen.append(line)
            if needle in line:
                return seen
        elif proc.poll() is not None:
            break
        else:
            time.sleep(0.02)
    pytest.fail(f"no {needle!r} in {''.join(seen)}")


def test_worker_started_through_entrykit_stops_cleanly_on_sigterm() -> None:
    env = {
        **os.environ,
        "WORKER_INTERVAL": "30",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "ENTRYKIT_CONFIG": "",
        "ENTRYKIT_MIGRATE": "0",
        "ENTRYKIT_PRESTART": "",  # no database: no once = true initial data
    }
    for name in ("DATABASE_URL", "ENTRYKIT_DATABASE_URL", "ENTRYKIT_HF_MODELS"):
        env.pop(name, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "entrykit", "python", "-m", "worker"],
        cwd=APP_DIR,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = _wait_for_line(proc, "worker started", timeout=20)
        # entrykit exec'd the worker: same PID, so the orchestrator's SIGTERM reaches it.
        assert f"pid {proc.pid}," in lines[-1]
        _wait_for_line(proc, "tick", timeout=10)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
        assert time.monotonic() - started < 2, "SIGTERM must cut the 30 s sleep short"
        assert proc.stderr is not None
        rest = proc.stderr.read()
        assert "SIGTERM received" in rest and "stopped cleanly" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def _wait_until_serving(proc: subprocess.Popen[str], url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            assert proc.stderr is not None
            pytest.fail(f"exited {proc.returncode}:\n{proc.stderr.read()}")
        try:
            _get_json(url)
            return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"{url} did not answer within {timeout} s")


def _add_a_note_and_let_the_worker_take_it(base: str, env: dict[str, str]) -> None:
    request = urllib.request.Request(
        f"{base}/notes",
        data=json.dumps({"body": "hello"}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 201
        note = json.load(response)
    assert note["body"] == "hello"
    assert _get_json(f"{base}/notes")["jobs"] == {"queued": 1}

    # The worker, started the same way, takes the queued job; SIGTERM ends it with 0.
    worker = subprocess.Popen(
        [*ENTRYKIT, sys.executable, "-m", "worker"],
        cwd=APP_DIR,
        env={**env, "WORKER_INTERVAL": "30", "ENTRYKIT_MIGRATE": "wait"},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_line(worker, f"job 1 done (note {note['id']})", timeout=30)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=5) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert _get_json(f"{base}/notes")["jobs"] == {"done": 1}


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_example_app_through_entrykit_serves_models_and_migrated_rows(
    backend: str, request: pytest.FixtureRequest, local_hub: LocalHub, tmp_path: Path
) -> None:
    password = "pw-" + uuid.uuid4().hex
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    if backend == "postgresql":
        postgres_server: PostgresServer = request.getfixturevalue("postgres_server")
        role = postgres_server.create_role("app_" + uuid.uuid4().hex[:8], password)
        dbname = postgres_server.create_database(owner=role)
        (secrets / "postgres_password").write_text(password + "\n")
        database_url = postgres_server.url(user=role, dbname=dbname)  # no password in it
    else:  # the README's quickstart
        database_url = f"sqlite:///{tmp_path / 'app.db'}"
    repo = "entrykit-test/tiny-model"
    local_hub.add_repo(
        repo, {"config.json": b'{"hidden_size": 8}', "model.safetensors": bytes(4096)}
    )
    port = free_port()
    env = hub_env(
        local_hub,
        tmp_path / "hf",
        base=clean_env(secrets),
        DATABASE_URL=database_url,
        ENTRYKIT_HF_MODELS=repo,
    )
    proc = subprocess.Popen(
        [*ENTRYKIT, sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(port)],
        cwd=APP_DIR,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_until_serving(proc, f"{base}/healthz", timeout=60)
        assert _get_json(f"{base}/healthz") == {"status": "ok"}
        assert _get_json(f"{base}/readyz")["status"] == "ready"
        models = _get_json(f"{base}/models")
        assert models["offline"] is True  # ENTRYKIT_HF_OFFLINE from entrykit.toml
        assert [m["repo_id"] for m in models["models"]] == [repo]
        assert models["models"][0]["revisions"][0]["commit"] == local_hub.sha(repo)
        assert _get_json(f"{base}/models/{repo}/files/model.safetensors")["bytes"] == 4096
        with pytest.raises(urllib.error.HTTPError) as missing:
            _get_json(f"{base}/models/{repo}/files/nope.bin")
        assert missing.value.code == 404
        assert _get_json(f"{base}/notes") == {"table": "notes", "rows": [], "jobs": {}}
        if backend == "postgresql":
            _add_a_note_and_let_the_worker_take_it(base, env)
        else:  # the worker needs PostgreSQL (SKIP LOCKED); the app writes on SQLite too
            request = urllib.request.Request(
                f"{base}/notes",
                data=b'{"body": "on sqlite"}',
                headers={"Content-Type": "application/json"},
                method="POST",
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.status == 201
            assert [row["body"] for row in _get_json(f"{base}/notes")["rows"]] == ["on sqlite"]

        # entrykit exec'd uvicorn (same PID): SIGTERM reaches it and it shuts down cleanly.
        # uvicorn then re-raises the signal, which ends it here; as a container's PID 1 the
        # kernel ignores that and it exits 0 (tests/test_container.py).
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) in (0, -signal.SIGTERM)
        assert proc.stderr is not None
        log = proc.stderr.read()
        assert f"Started server process [{proc.pid}]" in log  # exec'd: entrykit's own PID
        assert "Finished server process" in log
        assert password not in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
