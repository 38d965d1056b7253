"""Secrets from real files and links."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from entrykit_process import clean_env, run_entrykit
from hypothesis import given, settings
from hypothesis import strategies as st

from entrykit.errors import ConfigError, SecretError
from entrykit.secretfiles import MAX_SECRET_BYTES, SecretEntry, _read_secret, load_secrets
from entrykit.settings import Settings


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "secrets"
    path.mkdir()
    return path


def load(folder: Path, entries: str, **environ: str) -> dict[str, str]:
    env = {"ENTRYKIT_SECRETS_DIR": str(folder), "ENTRYKIT_SECRETS": entries, **environ}
    secret_set = load_secrets(Settings.load(environ=env))
    result = dict(env)
    secret_set.apply(result)
    return result


def kubernetes_layout(root: Path, files: dict[str, str]) -> None:
    """What the kubelet mounts: a timestamped folder, ``..data`` and links to it."""
    stamped = root / "..2026_11_22_05_00_00.123456789"
    stamped.mkdir()
    for name, value in files.items():
        (stamped / name).write_text(value)
    (stamped / "kubernetes.io").mkdir()
    (stamped / "kubernetes.io" / "token").write_text("service-account-token")
    (root / "..data").symlink_to(stamped.name)
    for name in [*files, "kubernetes.io"]:
        (root / name).symlink_to(f"..data/{name}")


def test_kubernetes_links_are_followed(folder: Path) -> None:
    kubernetes_layout(folder, {"db-password": "s3cret-db\n", "API_KEY": "key-123"})
    env = load(folder, "DB_PASSWORD=db-password,API_KEY")
    assert env["DB_PASSWORD"] == "s3cret-db"
    assert env["API_KEY"] == "key-123"


def test_star_loads_top_level_files_and_skips_dot_names_and_folders(folder: Path) -> None:
    kubernetes_layout(folder, {"db-password": "pw1234", "api.key": "k-5678"})
    env = load(folder, "*")
    assert env["DB_PASSWORD"] == "pw1234"
    assert env["API_KEY"] == "k-5678"
    assert not any(name.startswith(("_", "KUBERNETES")) for name in env if name.isupper())
    assert "..DATA" not in env and "__DATA" not in env


@pytest.mark.parametrize(
    ("content", "value"),
    [
        (b"secret\n", "secret"),
        (b"secret\r\n", "secret"),
        (b"secret\n\n\r\n", "secret"),
        (b"secret", "secret"),
        (b"two\nlines\n", "two\nlines"),
        (b"  spaced  \n", "  spaced  "),
        ("pässwörd\n".encode(), "pässwörd"),
    ],
)
def test_trailing_newlines_are_dropped(folder: Path, content: bytes, value: str) -> None:
    (folder / "TOKEN").write_bytes(content)
    assert load(folder, "TOKEN")["TOKEN"] == value


def test_empty_file_gives_an_empty_value(folder: Path) -> None:
    (folder / "TOKEN").write_bytes(b"")
    assert load(folder, "TOKEN")["TOKEN"] == ""


def test_exactly_64_kib_is_accepted_and_one_more_byte_is_11(folder: Path) -> None:
    (folder / "BIG").write_bytes(b"a" * MAX_SECRET_BYTES)
    assert len(load(folder, "BIG")["BIG"]) == MAX_SECRET_BYTES
    (folder / "BIG").write_bytes(b"a" * (MAX_SECRET_BYTES + 1))
    with pytest.raises(SecretError, match="larger than 64 KiB") as error:
        load(folder, "BIG")
    assert error.value.exit_code == 11


@pytest.mark.parametrize(
    ("content", "reason"), [(b"\xff\xfepw", "not UTF-8"), (b"pass\0word", "NUL byte")]
)
def test_binary_content_is_11_without_showing_it(folder: Path, content: bytes, reason: str) -> None:
    (folder / "TOKEN").write_bytes(content)
    with pytest.raises(SecretError, match=reason) as error:
        load(folder, "TOKEN")
    assert "word" not in str(error.value)
    assert str(folder / "TOKEN") in str(error.value)


def test_link_leaving_the_folder_is_refused(folder: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("do-not-read")
    (folder / "TOKEN").symlink_to(outside)
    with pytest.raises(SecretError, match="links outside"):
        load(folder, "TOKEN")
    with pytest.raises(SecretError, match="links outside"):
        load(folder, "*")


def test_var_file_may_point_anywhere_and_is_removed(folder: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere" / "pw"
    elsewhere.parent.mkdir()
    elsewhere.write_text("from-var-file\n")
    env = load(folder, "DB_PASSWORD", DB_PASSWORD_FILE=str(elsewhere))
    assert env["DB_PASSWORD"] == "from-var-file"
    assert "DB_PASSWORD_FILE" not in env


def test_both_var_and_var_file_is_11(folder: Path, tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("x1234")
    with pytest.raises(SecretError, match="both DB_PASSWORD and DB_PASSWORD_FILE"):
        load(folder, "DB_PASSWORD", DB_PASSWORD="set", DB_PASSWORD_FILE=str(tmp_path / "pw"))


def test_named_file_wins_over_environment_and_environment_over_folder(folder: Path) -> None:
    (folder / "db_pw").write_text("from-file")
    (folder / "API_KEY").write_text("from-folder")
    env = load(folder, "DB_PASSWORD=db_pw,API_KEY", DB_PASSWORD="from-env", API_KEY="env-key")
    assert env["DB_PASSWORD"] == "from-file"
    assert env["API_KEY"] == "env-key"


def test_lower_case_file_name_is_found(folder: Path) -> None:
    (folder / "api_key").write_text("lower-case")
    assert load(folder, "API_KEY")["API_KEY"] == "lower-case"


def test_missing_secret_names_every_path_tried(folder: Path) -> None:
    with pytest.raises(SecretError) as error:
        load(folder, "API_KEY")
    assert str(folder / "API_KEY") in str(error.value)
    assert str(folder / "api_key") in str(error.value)


def test_optional_secret_is_skipped(folder: Path) -> None:
    assert "API_KEY" not in load(folder, "API_KEY?")


@pytest.mark.parametrize("file", ["../etc/passwd", "sub/file", ".hidden", "..data", ""])
def test_file_names_that_are_not_plain_are_config_errors(folder: Path, file: str) -> None:
    with pytest.raises(ConfigError) as error:
        load(folder, f"TOKEN={file}")
    assert error.value.exit_code == 10


def test_hub_token_is_discovered_in_order(folder: Path, tmp_path: Path) -> None:
    (folder / "HF_TOKEN").write_text("hf_third")
    assert load(folder, "")["HF_TOKEN"] == "hf_third"
    (folder / "huggingface_token").write_text("hf_second")
    assert load(folder, "")["HF_TOKEN"] == "hf_second"
    (folder / "hf_token").write_text("hf_first")
    assert load(folder, "")["HF_TOKEN"] == "hf_first"
    (tmp_path / "tok").write_text("hf_from_file_var")
    env = load(folder, "", HF_TOKEN_FILE=str(tmp_path / "tok"))
    assert env["HF_TOKEN"] == "hf_from_file_var"
    assert "HF_TOKEN_FILE" not in env
    assert load(folder, "", HF_TOKEN="hf_env")["HF_TOKEN"] == "hf_env"


def test_the_command_gets_the_secrets_and_not_the_file_variables(
    folder: Path, tmp_path: Path
) -> None:
    (tmp_path / "pw").write_text("pw-from-file\n")
    kubernetes_layout(folder, {"api_key": "k8s-key-1"})
    env = clean_env(
        folder,
        ENTRYKIT_SECRETS="DB_PASSWORD,API_KEY",
        DB_PASSWORD_FILE=str(tmp_path / "pw"),
    )
    result = run_entrykit(["env"], env)
    assert result.returncode == 0, result.stderr
    seen = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    assert seen["DB_PASSWORD"] == "pw-from-file"
    assert seen["API_KEY"] == "k8s-key-1"
    assert "DB_PASSWORD_FILE" not in seen


def test_secrets_command_lists_name_source_length(folder: Path) -> None:
    (folder / "api_key").write_text("abcdef\n")
    result = run_entrykit(["secrets"], clean_env(folder, ENTRYKIT_SECRETS="API_KEY"))
    assert result.returncode == 0
    assert result.stdout == f"API_KEY\t{folder / 'api_key'}\t6 bytes\n"
    assert "abcdef" not in result.stdout + result.stderr


def test_secrets_command_exits_11_on_a_bad_secret(folder: Path) -> None:
    (folder / "api_key").write_bytes(b"\0\0\0\0")
    result = run_entrykit(["secrets"], clean_env(folder, ENTRYKIT_SECRETS="API_KEY"))
    assert result.returncode == 11
    assert "NUL byte" in result.stderr


def test_a_secret_can_be_the_database_url(folder: Path, tmp_path: Path) -> None:
    """DATABASE_URL_FILE: the settings are read again after the secrets step."""
    (folder / "database_url").write_text("postgresql://app:pw-in-url@127.0.0.1:1/app\n")
    env = clean_env(folder, ENTRYKIT_SECRETS="DATABASE_URL", ENTRYKIT_WAIT="0")
    result = run_entrykit(["plan", "--format", "json"], env)
    shown = {item["name"]: item for item in json.loads(result.stdout)["settings"]}
    # The whole URL is a loaded secret value, so it is hidden as a whole.
    assert shown["database_url"] == {"name": "database_url", "value": "***", "source": "env"}
    assert "pw-in-url" not in result.stdout + result.stderr


# --- property-based: any input gives a value or a documented error, never a traceback ---


@given(st.text(max_size=60))
@settings(max_examples=300, deadline=None)
def test_any_entry_text_parses_or_is_a_config_error(text: str) -> None:
    try:
        entry = SecretEntry.parse(text)
    except ConfigError:
        return
    assert entry.variable.isidentifier()
    if entry.file is not None:
        assert "/" not in entry.file and not entry.file.startswith(".")


@given(st.binary(max_size=300))
@settings(max_examples=300, deadline=None)
def test_any_file_content_reads_or_is_a_secret_error(content: bytes) -> None:
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"entrykit-prop-{os.getpid()}"
    path.write_bytes(content)
    try:
        value = _read_secret(path, "X")
    except SecretError as error:
        assert error.exit_code == 11
        return
    finally:
        path.unlink()
    assert not value.endswith("\n")
    assert value.encode() == content.rstrip(b"\n") or content.endswith(b"\r\n")


# --- special files: error 11 at once, never a blocked open ----------------------------------


@pytest.fixture
def special_files(folder: Path, tmp_path: Path) -> Iterator[dict[str, Path]]:
    """A FIFO, a link to it, a folder, a listening Unix socket and a character device."""
    os.mkfifo(folder / "fifo")
    (folder / "fifo_link").symlink_to("fifo")
    (folder / "folder").mkdir()
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(folder / "sock"))
    listener.listen(1)
    yield {
        "fifo": folder / "fifo",
        "fifo_link": folder / "fifo_link",
        "folder": folder / "folder",
        "sock": folder / "sock",
        "device": Path("/dev/zero"),  # endless: reading it would never end either
    }
    listener.close()


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("fifo", "a FIFO"),
        ("fifo_link", "a FIFO"),
        ("folder", "a directory"),
        ("sock", "a socket"),
        ("device", "a character device"),
    ],
)
def test_a_special_file_is_11_at_once(
    folder: Path, special_files: dict[str, Path], name: str, kind: str
) -> None:
    path = special_files[name]
    # Through VAR_FILE (any path) and as the folder's own file (found by its name).
    attempts = [lambda: load(folder, "TOKEN", TOKEN_FILE=str(path))]
    if path.parent == folder:
        attempts.append(lambda: load(folder, f"TOKEN={name}"))
    for attempt in attempts:
        started = time.monotonic()
        with pytest.raises(SecretError, match=f"is {kind}, not a regular file") as error:
            attempt()
        assert error.value.exit_code == 11
        assert time.monotonic() - started < 1


@pytest.mark.timeout(60)
def test_a_fifo_as_hub_token_stops_run_with_11(folder: Path) -> None:
    os.mkfifo(folder / "huggingface_token")
    started = time.monotonic()
    result = run_entrykit(["true"], clean_env(folder), timeout=30)
    assert result.returncode == 11, result.stderr
    assert "is a FIFO, not a regular file" in result.stderr
    assert time.monotonic() - started < 20


def test_an_empty_hub_token_file_means_anonymous_without_a_warning(folder: Path) -> None:
    (folder / "huggingface_token").write_text("\n")
    (folder / "api_key").write_text("")
    env = clean_env(folder, ENTRYKIT_SECRETS="API_KEY")
    result = run_entrykit(["sh", "-c", 'echo "${HF_TOKEN-unset}"'], env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "unset\n"
    warnings = [line for line in result.stderr.splitlines() if " WARNING " in line]
    assert len(warnings) == 1 and "secret API_KEY" in warnings[0], warnings
    # HF_TOKEN_FILE too; the variable is consumed as usual
    (folder / "huggingface_token").unlink()
    empty = folder.parent / "empty-token"
    empty.write_text("")
    env = clean_env(folder, HF_TOKEN_FILE=str(empty))
    result = run_entrykit(["sh", "-c", 'echo "${HF_TOKEN-unset} ${HF_TOKEN_FILE-gone}"'], env)
    assert result.stdout == "unset gone\n"
    assert " WARNING " not in result.stderr


def test_the_password_of_a_url_secret_is_a_secret_alone(folder: Path) -> None:
    from entrykit import logs

    (folder / "redis_url").write_text("redis://:r3dis%2Fpass@redis:6379/0\n")
    load(folder, "REDIS_URL")
    assert logs.redact("AUTH failed for r3dis/pass") == "AUTH failed for ***"
