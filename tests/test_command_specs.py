"""Start-up command specs as read: ``[[commands]]`` tables, ``ENTRYKIT_PRESTART`` lines, names.

Every bad value is a configuration error (exit 10) at load, naming the table and the key,
before any step runs; exec-form arguments and env values reach the command exactly as written.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from entrykit_process import clean_env, run_entrykit
from hypothesis import given, settings
from hypothesis import strategies as st

from entrykit.errors import ConfigError
from entrykit.settings import Settings
from entrykit.specs import NAME_MOST, CommandSpec, check_lock_name, default_command_name
from entrykit.values import as_positive_seconds


def toml(value: object) -> str:
    """A TOML value: JSON strings and lists are TOML's basic strings and arrays."""
    return json.dumps(value)


def write_commands(directory: Path, *tables: str) -> Path:
    path = directory / "entrykit.toml"
    path.write_text("".join(f"[[commands]]\n{table}\n" for table in tables))
    return path


WRITE_ARGS_AND_SEP = (
    "import json, os, sys; "
    "open(sys.argv[1], 'w').write(json.dumps([sys.argv[2:], os.environ['SEP']]))"
)


def test_exec_form_items_and_env_values_reach_the_command_exactly_as_written(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out.json"
    argv = [sys.executable, "-c", WRITE_ARGS_AND_SEP, str(out), "[%s]\n", "  padded  ", ""]
    write_commands(tmp_path, f"run = {toml(argv)}\nenv = {{ SEP = {toml('  x  ')} }}")
    result = run_entrykit(["run", "--", "true"], clean_env(tmp_path / "secrets"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text()) == [["[%s]\n", "  padded  ", ""], "  x  "]
    # plan shows the command on one line: the newline is written $'[%s]\n'.
    plan = run_entrykit(["plan", "--", "printf", "a\nb"], clean_env(tmp_path), cwd=tmp_path)
    steps = plan.stdout.split("steps:")[1].strip().splitlines()
    assert len(steps) == 3, plan.stdout
    assert "$'[%s]\\n' '  padded  '" in steps[1] and steps[2].endswith("exec: printf $'a\\nb'")


def test_the_string_form_is_split_like_a_shell_would(tmp_path: Path) -> None:
    write_commands(tmp_path, "run = \"  printf '[%s]' '  padded  '  \"")
    (spec,) = Settings.load(environ={}, cwd=tmp_path).prestart
    assert spec.argv == ("printf", "[%s]", "  padded  ")


def test_a_command_shows_as_one_shell_line() -> None:
    spec = CommandSpec("x", ("printf", "[%s]\n", "it's", "a b", "caf\u2028e"))
    assert str(spec) == "printf $'[%s]\\n' 'it'\"'\"'s' 'a b' $'caf\\u2028e'"


@pytest.mark.parametrize(
    ("table", "key", "problem"),
    [
        ('env = { "A=B" = "1" }', 'env."A=B"', "a variable name is not empty and holds no '='"),
        ('env = { "" = "1" }', 'env.""', "a variable name is not empty"),
        ('env = { "x\\u0000y" = "1" }', 'env."x\\u0000y"', "holds no '=' or NUL"),
        ('env = { A = "x\\u0000y" }', "env.A", "a value holds no NUL character"),
        ("env = { B = true }", "env.B", "expected a string, got bool"),
        ("env = [1]", "env", "expected a table of strings, got a list"),
        ('run = ["echo", "a\\u0000b"]', "run[2]", "an argument holds no NUL character"),
        ('run = "echo a\\u0000b"', "run", "a command holds no NUL character"),
        ('run = ["echo", true]', "run[2]", "expected a string, got bool"),
        ('run = ["", "x"]', "run", "empty command"),
        ("run = 5", "run", "expected a string or a list, got int"),
        ("run = 1.5", "run", "expected a string or a list, got float"),
        ("run = { a = 1 }", "run", "expected a string or a list, got dict"),
        ('run = ["sleep", 1.5]', "run[2]", "expected a string, got the float 1.5: write it in"),
        ("env = { X = 1.5 }", "env.X", "expected a string, got the float 1.5: write it in quotes"),
        ("name = 5", "name", "expected a string, got int"),
        ("timeout = -1", "timeout", "expected a finite number of seconds above 0, got -1"),
        ("timeout = 0", "timeout", "expected a finite number of seconds above 0, got 0"),
        ('timeout = "1h"', "timeout", "above 0, got '1h'"),
        ("timeout = inf", "timeout", "above 0, got inf"),
        ("timeout = nan", "timeout", "above 0, got nan"),
        ("timeout = true", "timeout", "above 0, got true"),
        ('once = "maybe"', "once", "expected true or false, got 'maybe'"),
        ("once = [true]", "once", "expected true or false, got a list"),
        ("name = true", "name", "expected a string, got bool"),
        ('name = ":"', "name", "':': a letter or digit, then letters, digits and . _ : -"),
        ('name = ".."', "name", "'..': a letter or digit, then letters, digits and . _ : -"),
        ('name = " job"', "name", "' job': a letter or digit"),
        (f'name = "{"n" * (NAME_MOST + 1)}"', "name", f"({NAME_MOST + 1} characters)"),
    ],
)
def test_every_bad_key_is_a_config_error_naming_table_and_key(
    tmp_path: Path, table: str, key: str, problem: str
) -> None:
    if not table.startswith("run"):
        table = f'run = ["true"]\n{table}'
    path = write_commands(tmp_path, 'run = ["true"]', table)  # the second table is the bad one
    with pytest.raises(ConfigError) as error:
        Settings.load(environ={}, cwd=tmp_path)
    message = str(error.value)
    assert message.startswith(f"commands[2].{key} (file:{path}): ")
    assert problem in message
    assert "\n" not in message and "\0" not in message
    assert error.value.exit_code == 10


def test_a_bad_table_is_exit_10_before_the_migrations_run(tmp_path: Path) -> None:
    """It used to be exit 50 at run time, from exec, after the migrate command had run."""
    marker = tmp_path / "migrated"
    write_commands(tmp_path, 'run = ["true"]\nenv = { "A=B" = "1" }')
    env = clean_env(
        tmp_path / "secrets",
        DATABASE_URL=f"sqlite:///{tmp_path}/app.db",
        ENTRYKIT_MIGRATE="1",
        ENTRYKIT_MIGRATE_COMMAND=f"touch {marker}",
    )
    result = run_entrykit(["run", "--", "true"], env, cwd=tmp_path)
    assert result.returncode == 10, result.stderr
    assert f'commands[1].env."A=B" (file:{tmp_path / "entrykit.toml"}): ' in result.stderr
    assert not marker.exists()


@pytest.mark.parametrize(
    ("raw", "seconds"), [(120, 120.0), (0.5, 0.5), ("30", 30.0), (" 2.5 ", 2.5)]
)
def test_good_table_timeouts(tmp_path: Path, raw: object, seconds: float) -> None:
    write_commands(tmp_path, f'run = ["true"]\ntimeout = {toml(raw)}')
    (spec,) = Settings.load(environ={}, cwd=tmp_path).prestart
    assert spec.timeout == seconds


@pytest.mark.parametrize("raw", [0, -1, "0", "nan", "inf", "-inf", float("nan"), True, "1h"])
def test_positive_seconds_refuses_what_is_no_time_limit(raw: object) -> None:
    with pytest.raises(ValueError, match="above 0"):
        as_positive_seconds(raw)


# --- ENTRYKIT_PRESTART --------------------------------------------------------------------------


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x1c", "\x1d", "\x1e", "\v", "\f"])
def test_prestart_lines_end_at_newline_only(tmp_path: Path, separator: str) -> None:
    text = f"echo caf{separator}e\r\nprintf x\r\n"
    loaded = Settings.load(environ={"ENTRYKIT_PRESTART": text}, cwd=tmp_path)
    assert [spec.argv for spec in loaded.prestart] == [
        ("echo", f"caf{separator}e"),
        ("printf", "x"),
    ]


def test_a_prestart_line_with_a_line_separator_runs_as_one_command(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    line = f'{sys.executable} -c "{WRITE_ARGS_AND_SEP}" {out} caf\u2028e'
    env = clean_env(tmp_path / "secrets", ENTRYKIT_PRESTART=line, SEP="-")
    result = run_entrykit(["run", "--", "true"], env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text()) == [["caf\u2028e"], "-"]


def test_a_nul_in_a_prestart_line_is_a_config_error_naming_the_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        Settings.load(environ={"ENTRYKIT_PRESTART": "true\necho a\0b\n"}, cwd=tmp_path)
    assert str(error.value) == "ENTRYKIT_PRESTART (env): line 2: a command holds no NUL character"
    path = tmp_path / "entrykit.toml"
    path.write_text('prestart = ["true", "echo a\\u0000b"]\n')
    with pytest.raises(ConfigError, match=r"prestart \(file:.*\): line 2: a command holds no NUL"):
        Settings.load(environ={}, cwd=tmp_path)


# --- names ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "name"),
    [
        (("python", "-m", "app.initial_data"), "app.initial_data"),
        (("python3.11", "-m", "app.initial_data"), "app.initial_data"),
        (("python3", "-m", ""), "python3"),
        (("python3", "-m", "..."), "python3"),
        (("./manage.py", "collectstatic"), "manage.py"),
        (("/tmp/my dir/my tool",), "my-tool"),
        (("my tool!",), "my-tool"),
        (("-dash",), "dash"),
        (("café",), "caf"),
        (("/",), "command"),
        (("..",), "command"),
        (("é",), "command"),
        (("x" * 300,), "x" * NAME_MOST),
    ],
)
def test_default_names_are_always_valid(argv: tuple[str, ...], name: str) -> None:
    assert default_command_name(argv) == name
    assert check_lock_name(name) == name


@given(st.lists(st.text(min_size=1, max_size=40), min_size=1, max_size=4))
@settings(max_examples=300, deadline=None)
def test_any_default_name_is_a_valid_lock_name(argv: list[str]) -> None:
    check_lock_name(default_command_name(tuple(argv)))


def test_a_table_without_a_name_gets_a_valid_one_and_can_run_once(tmp_path: Path) -> None:
    tool = tmp_path / "my dir" / "my tool"
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\necho tool ran\n")
    tool.chmod(0o755)
    write_commands(tmp_path, f"run = {toml([str(tool)])}\nonce = true")
    env = clean_env(tmp_path / "secrets", DATABASE_URL=f"sqlite:///{tmp_path}/app.db")
    result = run_entrykit(["run", "--", "true"], env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "my-tool | tool ran" in result.stderr
    assert (tmp_path / "app.db.my-tool.once-lock").exists()


@pytest.mark.parametrize("name", [":", "..", "-x", "", "a b", "n" * (NAME_MOST + 1)])
def test_bad_lock_names_say_the_rule(name: str) -> None:
    with pytest.raises(ConfigError, match="a letter or digit, then letters, digits and") as error:
        check_lock_name(name)
    assert f"at most {NAME_MOST} characters" in str(error.value)


def test_the_longest_name_locks_on_sqlite(tmp_path: Path) -> None:
    name = "n" * NAME_MOST
    write_commands(tmp_path, f'name = "{name}"\nrun = ["true"]\nonce = true')
    env = clean_env(tmp_path / "secrets", DATABASE_URL=f"sqlite:///{tmp_path}/app.db")
    result = run_entrykit(["run", "--", "true"], env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    too_long = "n" * (NAME_MOST + 1)
    write_commands(tmp_path, f'name = "{too_long}"\nrun = ["true"]\nonce = true')
    result = run_entrykit(["run", "--", "true"], env, cwd=tmp_path)
    assert result.returncode == 10, result.stderr
    assert f"commands[1].name (file:{tmp_path / 'entrykit.toml'}): " in result.stderr


# --- plan rejects what run rejects ---------------------------------------------------------------


def test_plan_fails_like_run_on_a_once_command_without_a_database(tmp_path: Path) -> None:
    write_commands(tmp_path, 'name = "seed"\nrun = ["true"]\nonce = true')
    env = clean_env(tmp_path / "secrets")
    plan = run_entrykit(["plan", "--", "true"], env, cwd=tmp_path)
    run = run_entrykit(["run", "--", "true"], env, cwd=tmp_path)
    assert (plan.returncode, run.returncode) == (10, 10), (plan.stderr, run.stderr)
    message = "command seed has once = true, which needs a database for its cross-replica lock"
    assert message in plan.stderr and message in run.stderr
    with_database = {**env, "DATABASE_URL": f"sqlite:///{tmp_path}/app.db"}
    planned = run_entrykit(["plan", "--", "true"], with_database, cwd=tmp_path)
    assert planned.returncode == 0, planned.stderr
    assert "prestart: seed: true (once, under the lock seed)" in planned.stdout


@pytest.mark.parametrize("timeout", ["nan", "inf", "0", "-1", "1h"])
def test_once_timeout_that_is_no_time_limit_is_a_usage_error(tmp_path: Path, timeout: str) -> None:
    ran = tmp_path / "ran"
    env = clean_env(tmp_path, DATABASE_URL=f"sqlite:///{tmp_path}/app.db")
    result = run_entrykit(["once", "job", "--timeout", timeout, "--", "touch", str(ran)], env)
    assert result.returncode == 2, result.stderr
    assert "--timeout" in result.stderr
    assert not ran.exists()


def test_integers_in_env_and_run_are_their_digits(tmp_path: Path) -> None:
    """As compose takes numbers in ``environment``: ``PORT = 8000`` is "8000"."""
    write_commands(tmp_path, 'run = ["sleep", 0]\nenv = { PORT = 8000, BIG = 12_345 }')
    (spec,) = Settings.load(environ={}, cwd=tmp_path).prestart
    assert spec.argv == ("sleep", "0")
    assert dict(spec.env) == {"PORT": "8000", "BIG": "12345"}


@pytest.mark.parametrize(
    ("line", "argv"),
    [
        ("echo hi # a note", ("echo", "hi")),
        ("echo hi\t#note", ("echo", "hi")),
        ("echo a#b", ("echo", "a#b")),
        ("echo '#x' \"#y\" \\#z", ("echo", "#x", "#y", "#z")),
        ("echo 'a # b' # c", ("echo", "a # b")),
        ("echo \"it's\" #c 'unclosed", ("echo", "it's")),
    ],
)
def test_a_shell_comment_after_a_command_is_dropped(
    tmp_path: Path, line: str, argv: tuple[str, ...]
) -> None:
    """As a shell: a word starting with an unquoted # starts a comment; a#b and '#x' do not."""
    from entrykit.specs import split_command

    assert split_command(line) == argv
    settings = Settings.load(
        environ={"ENTRYKIT_PRESTART": f"# a whole-line comment\n{line}"}, cwd=tmp_path
    )
    assert [spec.argv for spec in settings.prestart] == [argv]


@pytest.mark.parametrize(
    "text, argv",
    [
        ("echo one \\\n  two", ("echo", "one", "two")),  # a continued line
        ("sh -c 'a\nb'", ("sh", "-c", "a\nb")),  # a newline inside quotes is the word's
        ("# a note\necho hi\n", ("echo", "hi")),
    ],
)
def test_a_command_line_reads_lines_as_a_shell_does(text: str, argv: tuple[str, ...]) -> None:
    from entrykit.specs import split_command

    assert split_command(text) == argv


@pytest.mark.parametrize("text", ["echo first # apply\necho second", "echo one\necho two"])
def test_two_commands_in_one_command_line_are_refused(tmp_path: Path, text: str) -> None:
    """A YAML block in ENTRYKIT_MIGRATE_COMMAND would otherwise run `migrate python ...`."""
    with pytest.raises(ConfigError, match="one command per line"):
        Settings.load(environ={"ENTRYKIT_MIGRATE_COMMAND": text}, cwd=tmp_path)
    (tmp_path / "entrykit.toml").write_text(f"[[commands]]\nrun = {text!r}\n".replace("'", '"'))
    with pytest.raises(ConfigError, match="one command per line"):
        Settings.load(environ={}, cwd=tmp_path)


def test_a_comment_in_a_prestart_line_is_not_passed_to_the_command(tmp_path: Path) -> None:
    env = clean_env(tmp_path / "secrets", ENTRYKIT_PRESTART="echo hi # a note")
    result = run_entrykit(["run", "--", "true"], env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "echo | hi\n" in result.stderr
    assert "note" not in result.stderr  # nor in the command line logged


def test_a_comment_in_the_migrate_command_is_dropped(tmp_path: Path) -> None:
    marker = tmp_path / "migrated"
    env = clean_env(
        tmp_path / "secrets",
        DATABASE_URL=f"sqlite:///{tmp_path}/app.db",
        ENTRYKIT_MIGRATE_COMMAND=f"touch {marker} # and not the file '#'",
    )
    result = run_entrykit(["migrate"], env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert marker.exists()
    assert sorted(path.name for path in tmp_path.iterdir() if "#" in path.name) == []
    assert not (tmp_path / "and").exists()
