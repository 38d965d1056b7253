"""The Django example's image, built as a new user builds it: from a checkout, with the build
context and Dockerfile its compose.yaml names (the repository root, since entrykit is not on
PyPI and is installed from its source), filtered by the root's ``.dockerignore``.

The context is a copy of the checkout (the files git tracks or would track) plus what local
runs leave behind in it (``build/`` and ``dist/`` from ``pip install . ./examples/fastapi-app``,
a secret file, collected static files, a SQLite file, an ``.env``); none of it may reach the
builder. The image then migrates a real PostgreSQL and seeds it through entrykit.

Needs root and ``tests/container/setup-podman.sh`` (podman, the base images); skipped where
podman cannot run. The image build needs PyPI (through the host's CA bundle, if any).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from postgres_fixtures import PostgresServer
from test_container import _ca_bundle, _pip_build_args, _podman_env

pytestmark = [pytest.mark.container, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "django-app"
IMAGE = "localhost/entrykit-django-example:test"
DEBIAN = "docker.io/library/debian:bookworm-slim"
SECRET_KEY = "test-only-django-secret-key-0123456789abcdefghijklmnopqrstuvwxyz"
# What local runs leave inside the allow-listed folders; the value is planted in each file,
# so the test also proves that no secret reaches the builder.
LEFTOVER = "leftover-value-that-must-not-reach-the-builder"
LEFTOVERS = [
    "examples/fastapi-app/build/lib/app/main.py",
    "examples/fastapi-app/dist/entrykit_example_app-0.1.0-py3-none-any.whl",
    "build/lib/entrykit/cli.py",
    "src/entrykit.egg-info/PKG-INFO",
    "examples/django-app/secrets/postgres_password",
    "examples/django-app/staticfiles/catalog/catalog.css",
    "examples/django-app/db.sqlite3",
    "examples/django-app/.env",
]


def _podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**_podman_env(), "BUILDAH_FORMAT": "docker"}
    return subprocess.run(
        ["podman", *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the checkout with a local run's leftovers in it."""
    if os.geteuid() != 0:
        pytest.skip("podman builds need root here: run the tests as root")
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed: run `bash tests/container/setup-podman.sh` as root")
    if _podman("image", "exists", DEBIAN).returncode != 0:
        pytest.fail(f"no base image {DEBIAN}: run `bash tests/container/setup-podman.sh`")
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    copy = tmp_path_factory.mktemp("checkout")
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():  # a path deleted in the work tree is still in the index
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / name)
    for name in LEFTOVERS:
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        (copy / name).write_text(LEFTOVER + "\n")
    return copy


def _build_section() -> dict[str, str]:
    build: dict[str, str] = yaml.safe_load((EXAMPLE / "compose.yaml").read_text())["x-app"]["build"]
    return build


def test_the_build_context_holds_only_the_allow_list(checkout: Path, tmp_path: Path) -> None:
    """What the builder receives from the repository root, read back from an image that copies
    the whole context (the real .dockerignore matching, not a re-implementation)."""
    containerfile = tmp_path / "Containerfile"
    containerfile.write_text(f"FROM {DEBIAN}\nCOPY . /context\n")
    tag = "localhost/entrykit-context-listing:test"
    built = _podman("build", "--file", str(containerfile), "--tag", tag, str(checkout))
    assert built.returncode == 0, built.stderr[-3000:]
    try:
        listed = _podman(
            "run", "--rm", "--network", "none", "--entrypoint", "find", tag,
            "/context", "-type", "f", "-printf", "%P\\n",
        )  # fmt: skip
        assert listed.returncode == 0, listed.stderr
        files = set(listed.stdout.split())
        grep = _podman("run", "--rm", "--network", "none", tag, "grep", "-rl", LEFTOVER, "/context")
    finally:
        _podman("rmi", "--force", tag)
    assert grep.stdout == "", grep.stdout  # no leftover, wherever it sits
    for name in LEFTOVERS:
        assert name not in files
    # What the two Dockerfiles copy is there; nothing else of the repository.
    for needed in (
        "pyproject.toml",
        "README.md",
        "LICENSE",
        "src/entrykit/cli.py",
        "examples/fastapi-app/entrykit.toml",
        "examples/django-app/manage.py",
        "examples/django-app/requirements.txt",
    ):
        assert needed in files, needed
    tops = {name.split("/", 1)[0] for name in files}
    assert tops == {"pyproject.toml", "README.md", "LICENSE", "src", "examples"}, tops
    assert {name.split("/")[1] for name in files if name.startswith("examples/")} == {
        "fastapi-app",
        "django-app",
    }


@pytest.mark.timeout(1200)
def test_the_django_image_builds_from_a_checkout_and_migrates_a_real_database(
    checkout: Path, tmp_path: Path, postgres_server: PostgresServer
) -> None:
    build = _build_section()
    context = (EXAMPLE / build["context"]).resolve()
    assert context == ROOT  # the root: entrykit is installed from its source
    command = ["build", "--file", str(checkout / build["dockerfile"]), "--tag", IMAGE]
    ca = _ca_bundle()
    if ca is not None:  # a TLS-intercepting proxy's CA, as compose passes BUILD_CA_BUNDLE
        command += ["--secret", f"id=ca_bundle,src={ca}"]
    built = _podman(*command, *_pip_build_args(), str(checkout), timeout=1100)
    assert built.returncode == 0, (built.stdout + built.stderr)[-4000:]
    try:
        requirements = (EXAMPLE / "requirements.txt").read_text().splitlines()
        assert not [line for line in requirements if line.lower().startswith("entrykit")]
        inside = _podman(
            "run", "--rm", "--network", "none", "--no-healthcheck", "--entrypoint", "sh", IMAGE,
            "-c", "ls -A /app; ls -A /app/staticfiles; test ! -e /src && entrykit --version",
        )  # fmt: skip
        assert inside.returncode == 0, inside.stderr
        assert "entrykit, version" in inside.stdout
        listed = set(inside.stdout.split())
        assert {"manage.py", "entrykit.toml", "catalog", "config"} <= listed
        assert not {"secrets", "db.sqlite3", ".env", "catalog.css"} & listed

        # entrykit migrate, then the seed job once, against a real PostgreSQL.
        dbname = postgres_server.create_database()
        secrets = tmp_path / "secrets"
        secrets.mkdir()
        (secrets / "postgres_password").write_text(postgres_server.password + "\n")
        (secrets / "django_secret_key").write_text(SECRET_KEY + "\n")
        for path in secrets.iterdir():
            path.chmod(0o644)  # the image's user, 10001, reads them
        url = postgres_server.url(user=postgres_server.superuser, dbname=dbname)  # no password
        assert postgres_server.password not in url
        run = ["run", "--rm", "--network", "host", "--no-healthcheck",
               "--volume", f"{secrets}:/run/secrets:ro", "--env", f"DATABASE_URL={url}", IMAGE]  # fmt: skip
        migrated = _podman(*run, "migrate", timeout=300)
        output = migrated.stdout + migrated.stderr
        assert migrated.returncode == 0, output[-3000:]
        assert "Applying catalog.0003_price_history... OK" in output, output[-3000:]
        seeded = _podman(*run, "once", "seed", "--", "python", "manage.py", "seed_demo")
        assert seeded.returncode == 0, (seeded.stdout + seeded.stderr)[-3000:]
        for text in (output, seeded.stdout + seeded.stderr):
            assert postgres_server.password not in text
            assert SECRET_KEY not in text
        rows = postgres_server.execute("SELECT count(*) FROM catalog_product", dbname=dbname)
        assert rows[0][0] > 0
    finally:
        _podman("rmi", "--force", IMAGE)
