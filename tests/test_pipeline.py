"""`entrykit run` end to end: migrations and prefetch side by side, against a real PostgreSQL
and the local Hub (INTERFACE §1, §7)."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from entrykit_process import ENTRYKIT, clean_env
from hub_fixtures import LocalHub, generated_bytes
from postgres_fixtures import PostgresServer

EXAMPLE = Path(__file__).parent.parent / "examples" / "fastapi-app"

pytestmark = pytest.mark.slow

REVISION = '''
"""{doc}"""
from alembic import op

revision = "{rev}"
down_revision = {down!r}
branch_labels = None
depends_on = None


def upgrade() -> None:
{body}


def downgrade() -> None:
    pass
'''


def alembic_project(root: Path, revisions: list[tuple[str, str]]) -> Path:
    """The example's alembic.ini and env.py with our own revisions: (id, upgrade body)."""
    shutil.copy(EXAMPLE / "alembic.ini", root / "alembic.ini")
    (root / "migrations" / "versions").mkdir(parents=True)
    for name in ("env.py", "script.py.mako"):
        shutil.copy(EXAMPLE / "migrations" / name, root / "migrations" / name)
    down = None
    for rev, body in revisions:
        text = REVISION.format(doc=rev, rev=rev, down=down, body=body)
        (root / "migrations" / "versions" / f"{rev}.py").write_text(text)
        down = rev
    return root / "alembic.ini"


def run_env(
    hub: LocalHub, tmp_path: Path, database: str, config: Path, models: str, **extra: str
) -> dict[str, str]:
    """`run` migrating ``database`` with ``config`` and prefetching ``models`` from ``hub``."""
    return hub.env(
        tmp_path / "hf",
        base=clean_env(tmp_path / "secrets"),
        DATABASE_URL=database,
        ENTRYKIT_MIGRATE="1",
        ENTRYKIT_ALEMBIC_CONFIG=str(config),
        ENTRYKIT_HF_MODELS=models,
        **extra,
    )


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*ENTRYKIT, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@pytest.fixture
def slow_hub() -> Iterator[LocalHub]:
    """A repo whose 32 MB file takes half a minute at 1 MB/s."""
    with LocalHub(bandwidth=1_000_000) as hub:
        hub.add_repo("acme/big", {"config.json": b"{}", "model.bin": generated_bytes(32_000_000)})
        yield hub


def test_a_failing_migration_stops_a_slow_prefetch(
    tmp_path: Path, postgres_database: str, slow_hub: LocalHub
) -> None:
    config = alembic_project(
        tmp_path,
        [
            ("0001", "    op.execute('CREATE TABLE t (id int)')"),
            ("0002", "    op.execute('SELECT no_such_function()')"),
        ],
    )
    env = run_env(slow_hub, tmp_path, postgres_database, config, "acme/big")
    started = time.monotonic()
    process = start(["run", "--", "touch", str(tmp_path / "app-started")], env)
    _, stderr = process.communicate(timeout=60)
    elapsed = time.monotonic() - started
    assert process.returncode == 30, stderr
    assert elapsed < 15, f"the prefetch was not stopped: {elapsed:.1f} s"  # it needs 32 s
    assert "0002" in stderr and "(exit 30)" in stderr
    assert "prefetch start" in stderr
    assert not (tmp_path / "app-started").exists()


def test_a_refused_prefetch_stops_a_slow_migration(
    tmp_path: Path, postgres_server: PostgresServer, postgres_database: str
) -> None:
    config = alembic_project(
        tmp_path,
        [
            (
                "0001",
                "    op.execute('CREATE TABLE slow (id int)')\n    op.execute('SELECT pg_sleep(30)')",
            )
        ],
    )
    with LocalHub() as hub:
        env = run_env(hub, tmp_path, postgres_database, config, "acme/does-not-exist")
        started = time.monotonic()
        process = start(["run", "--", "true"], env)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 42, stderr
    assert time.monotonic() - started < 15, "the migration was not stopped"
    assert "huggingface_token" in stderr or "not found" in stderr
    dbname = postgres_database.rsplit("/", 1)[1]
    # The connection died with the process: PostgreSQL rolled the revision back.
    deadline = time.monotonic() + 10
    while postgres_server.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND query LIKE %s",
        (dbname, "%pg_sleep%"),
    )[0][0]:
        assert time.monotonic() < deadline, "the slow migration kept running"
        time.sleep(0.2)
    tables = postgres_server.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'slow'", dbname=dbname
    )
    assert tables[0][0] == 0


def test_migrations_and_prefetch_run_side_by_side(tmp_path: Path, postgres_database: str) -> None:
    config = alembic_project(
        tmp_path,
        [
            (
                "0001",
                "    op.execute('CREATE TABLE t (id int)')\n    op.execute('SELECT pg_sleep(1.5)')",
            )
        ],
    )
    with LocalHub(bandwidth=2_000_000) as hub:
        hub.add_repo("acme/small", {"config.json": b"{}", "model.bin": generated_bytes(3_000_000)})
        env = run_env(
            hub, tmp_path, postgres_database, config, "acme/small", ENTRYKIT_HF_OFFLINE="1"
        )
        process = start(["run", "--", "sh", "-c", "echo HF_HUB_OFFLINE=$HF_HUB_OFFLINE"], env)
        stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert stdout == "HF_HUB_OFFLINE=1\n"
    events = [
        (line.split()[2], line.split()[3])
        for line in stderr.splitlines()
        if len(line.split()) > 3 and line.split()[2] in ("migrate", "prefetch")
    ]
    starts = [i for i, (_, word) in enumerate(events) if word == "start"]
    dones = [i for i, (_, word) in enumerate(events) if word == "done"]
    assert len(starts) == 2 and len(dones) == 2, events
    assert max(starts) < min(dones), "one step waited for the other"
    exec_line = next(line for line in stderr.splitlines() if " exec " in line)
    assert "migrate" in exec_line and "prefetch" in exec_line and "total" in exec_line
