"""What ``run`` refuses before its first step, ``plan`` refuses too; and the command-line
inputs that must be exit 10 or 2 in one line, never a traceback or a wrong code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from entrykit_process import clean_env, run_entrykit

SECRET = "Pw-4-preflight-xyz"

# (environment, what the one error line says): each refused by run before any step.
REFUSED = {
    "migrate without a database": (
        {"ENTRYKIT_MIGRATE": "1"},
        "nothing to migrate: set DATABASE_URL",
    ),
    "wait mode without a database": (
        {"ENTRYKIT_MIGRATE": "wait"},
        "ENTRYKIT_MIGRATE=wait needs the database",
    ),
    "a migrate command without a database": (
        {"ENTRYKIT_MIGRATE": "1", "ENTRYKIT_MIGRATE_COMMAND": "true"},
        "ENTRYKIT_MIGRATE_COMMAND runs under the replica lock, which needs the database",
    ),
    "wait mode with a migrate command but no check command": (
        {"ENTRYKIT_MIGRATE": "wait", "ENTRYKIT_MIGRATE_COMMAND": "true"},
        "needs ENTRYKIT_MIGRATE_CHECK_COMMAND",
    ),
    "an Alembic config missing (before waiting for the database)": (
        {"ENTRYKIT_MIGRATE": "1", "DATABASE_URL": f"postgresql://u:{SECRET}@127.0.0.1:1/db"},
        "alembic.ini not found",
    ),
    "an Alembic script_location that does not exist": (
        {
            "ENTRYKIT_MIGRATE": "1",
            "DATABASE_URL": f"postgresql://u:{SECRET}@127.0.0.1:1/db",
            "ENTRYKIT_ALEMBIC_CONFIG": "nowhere.ini",
        },
        "Alembic scripts: Path doesn't exist",
    ),
    "two [[models]] in one local_dir": (
        {"ENTRYKIT_CONFIG": "shared.toml"},
        "share a folder",
    ),
    "an unknown wait scheme": ({"ENTRYKIT_WAIT_FOR": "ftp://h/x"}, "unknown scheme 'ftp://'"),
    "a wait port out of range": (
        {"ENTRYKIT_WAIT_FOR": f"redis://:{SECRET}@h:99999/0"},
        "the port is not a number from 1 to 65535",
    ),
    "an unset variable in a wait URL": (
        {"ENTRYKIT_WAIT_FOR": "redis://:${NOT_SET_ANYWHERE}@h:6379/0"},
        "variable NOT_SET_ANYWHERE is not set",
    ),
    "a local dir for two repos": (
        {"ENTRYKIT_HF_LOCAL_DIR": "/models/x", "ENTRYKIT_HF_MODELS": "a/b,c/d"},
        "ENTRYKIT_HF_LOCAL_DIR takes exactly one repo, not 2",
    ),
}


@pytest.mark.parametrize("extra, said", REFUSED.values(), ids=REFUSED.keys())
@pytest.mark.parametrize("command", [["plan"], ["run", "--", "true"]])
def test_plan_refuses_what_run_refuses_before_its_first_step(
    tmp_path: Path, command: list[str], extra: dict[str, str], said: str
) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "nowhere.ini").write_text("[alembic]\nscript_location = nowhere\n")
    (tmp_path / "shared.toml").write_text(
        '[[models]]\nrepo = "a/b"\nlocal_dir = "/models/x"\n'
        '[[models]]\nrepo = "c/d"\nlocal_dir = "/models/x/d"\n'
    )
    result = run_entrykit(command, clean_env(tmp_path / "secrets", **extra), cwd=tmp_path)
    assert result.returncode == 10, result.stderr
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and said in errors[0], result.stderr
    assert " wait     start" not in result.stderr  # refused before the first step
    assert SECRET not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_a_config_error_is_logged_in_the_format_asked_for(tmp_path: Path) -> None:
    env = clean_env(ENTRYKIT_LOG_FORMAT="json", ENTRYKIT_WAIT_TIMEOUT="abc")
    for args in (["run", "--", "true"], ["plan"], ["wait"], ["prefetch", "a/b"]):
        result = run_entrykit(args, env, cwd=tmp_path)
        assert result.returncode == 10, result.stderr
        record = json.loads(result.stderr.strip().splitlines()[-1])
        assert record["step"] == "config" and record["exit_code"] == 10
        assert "ENTRYKIT_WAIT_TIMEOUT" in record["msg"]
    (tmp_path / "entrykit.toml").write_text('log_format = "json"\nwait_timeout = "soon"\n')
    result = run_entrykit(["run", "--", "true"], clean_env(), cwd=tmp_path)
    assert result.returncode == 10, result.stderr
    assert json.loads(result.stderr)["msg"].startswith("wait_timeout (file:")


def test_once_takes_cmds_own_options_without_a_double_dash(tmp_path: Path) -> None:
    env = clean_env(DATABASE_URL=f"sqlite:///{tmp_path / 'app.db'}")
    script = 'echo "args: $*"'
    result = run_entrykit(["once", "job", "sh", "-c", script, "x", "--timeout", "1"], env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "args: --timeout 1\n"
    result = run_entrykit(["once", "job", "--timeout", "5", "sh", "-c", "echo ran"], env)
    assert (result.returncode, result.stdout) == (0, "ran\n"), result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["once", "job", "--timout", "5", "--", "true"],
        ["once", "--timout", "5", "job", "--", "true"],
        ["once", "job", "--bogus", "--", "true"],
    ],
)
def test_a_mistyped_once_option_is_a_usage_error(tmp_path: Path, args: list[str]) -> None:
    env = clean_env(DATABASE_URL=f"sqlite:///{tmp_path / 'app.db'}")
    result = run_entrykit(args, env)
    assert result.returncode == 2, result.stderr
    assert "No such option" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "app.db").exists()


@pytest.mark.parametrize(
    "args, extra, said",
    [
        (["healthcheck"], {"PORT": "²"}, "PORT='²' is not a port number"),
        (["healthcheck"], {"PORT": "8" * 4400}, "is not a port number"),
        (["healthcheck", "--tcp", "127.0.0.1:²"], {}, "is not HOST:PORT"),
        (["wait", "--tcp", "127.0.0.1:٨٠"], {}, "is not HOST:PORT"),
        (["wait", f"redis://:{SECRET}@h:{'6' * 4400}/0"], {}, "the port is not a number"),
        (["wait", "--db", f"postgresql://u:{SECRET}@h:{'5' * 4400}/db"], {}, "not a number"),
        (["healthcheck", "--file", ""], {}, "--file (option): empty"),
        (["healthcheck", "--max-age", "60"], {}, "--max-age is for --file"),
        (["healthcheck", f"http://u:pa]{SECRET}@127.0.0.1:8000/"], {}, "Invalid IPv6 URL"),
        (["wait", "--http", f"http://u:pa[{SECRET}@127.0.0.1:8000/"], {}, "Invalid IPv6 URL"),
        (["prefetch", ""], {}, "SPEC is empty"),
        (["prefetch", "a/b", "--include", ""], {}, "--include is empty"),
        (["migrate", "--revision", ""], {}, "--revision (option): must not be empty"),
    ],
)
def test_bad_input_is_exit_10_in_one_line(
    tmp_path: Path, args: list[str], extra: dict[str, str], said: str
) -> None:
    result = run_entrykit(args, clean_env(**extra), cwd=tmp_path)
    assert result.returncode == 10, result.stderr
    assert said in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and SECRET not in result.stderr


def test_url_passwords_in_commands_are_secrets(tmp_path: Path) -> None:
    """A URL password with no pattern a scanner could know it by (a user name with "@", a
    quote in the password) is hidden in the exec line, a start-up command line and its
    output, and the healthcheck line."""
    password = "Won'der-Pw-99"
    url = f"postgresql://me@corp.example:{password}@127.0.0.1:1/db"
    env = clean_env(ENTRYKIT_PRESTART=f"echo {url.replace(chr(39), chr(92) + chr(39))}")
    result = run_entrykit(["run", "--", "true", url], env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "prestart" in result.stderr and " exec " in result.stderr
    assert "der-Pw" not in result.stderr
    result = run_entrykit(["healthcheck", f"http://me@corp.example:{password}@127.0.0.1:1/"], env)
    assert result.returncode == 1, result.stderr
    assert "unhealthy" in result.stdout and "der-Pw" not in result.stdout + result.stderr


def test_a_misspelt_variable_is_named_with_the_setting_it_looks_like(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("tok-value\n")
    env = clean_env(
        ENTRYKIT_MIGRTE="1",
        ENTRYKIT_SOMETHING_ELSE="x",
        ENTRYKIT_DATABASE_URL_FILE=str(tmp_path / "token"),  # read only when listed
        ENTRYKIT_SECRETS="ENTRYKIT_TOKEN",  # a secret of that prefix is no typo
        ENTRYKIT_TOKEN_FILE=str(tmp_path / "token"),
    )
    result = run_entrykit(["run", "--", "sh", "-c", "echo ${#ENTRYKIT_TOKEN}"], env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "9\n"
    warnings = [line for line in result.stderr.splitlines() if " WARNING " in line]
    assert len(warnings) == 3, result.stderr
    assert warnings[0].endswith(
        "ENTRYKIT_DATABASE_URL_FILE is no setting; ignored; "
        "list ENTRYKIT_DATABASE_URL in ENTRYKIT_SECRETS"
    )
    assert "ENTRYKIT_MIGRTE is no setting; ignored; did you mean ENTRYKIT_MIGRATE?" in warnings[1]
    assert warnings[2].endswith("ENTRYKIT_SOMETHING_ELSE is no setting; ignored")
