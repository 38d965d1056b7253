"""Settings: precedence, config files, every bad-value path."""

from __future__ import annotations

from pathlib import Path

import pytest
from entrykit_process import clean_env, run_entrykit
from hypothesis import given, settings
from hypothesis import strategies as st

from entrykit.errors import ConfigError
from entrykit.settings import SETTING_NAMES, CommandSpec, ModelSpec, Settings, variable_names


def test_defaults(tmp_path: Path) -> None:
    loaded = Settings.load(environ={}, cwd=tmp_path)
    assert loaded.wait_timeout == 60.0
    assert loaded.secrets_dir == Path("/run/secrets")
    assert loaded.hf_max_workers == 8
    assert loaded.migrate == "0"
    assert loaded.database_url is None
    assert not loaded.should_wait_for_database
    assert set(loaded.sources.values()) == {"default"}


def test_option_beats_env_beats_file_beats_default(tmp_path: Path) -> None:
    (tmp_path / "entrykit.toml").write_text(
        "wait_timeout = 30\nmigrate_lock_timeout = 40\nhf_max_workers = 3\n"
    )
    env = {"ENTRYKIT_WAIT_TIMEOUT": "20", "ENTRYKIT_MIGRATE_LOCK_TIMEOUT": "50"}
    loaded = Settings.load({"wait_timeout": 10}, env, tmp_path)
    assert loaded.wait_timeout == 10.0
    assert loaded.sources["wait_timeout"] == "option"
    assert loaded.migrate_lock_timeout == 50.0
    assert loaded.sources["migrate_lock_timeout"] == "env"
    assert loaded.hf_max_workers == 3
    assert loaded.sources["hf_max_workers"] == f"file:{tmp_path / 'entrykit.toml'}"
    assert loaded.migrate_revision == "head"
    assert loaded.sources["migrate_revision"] == "default"


def test_entrykit_database_url_wins_over_database_url(tmp_path: Path) -> None:
    env = {"DATABASE_URL": "postgresql://a@h/one", "ENTRYKIT_DATABASE_URL": "postgres://b@h/two"}
    loaded = Settings.load(environ=env, cwd=tmp_path)
    assert loaded.database_url == "postgres://b@h/two"
    assert loaded.should_wait_for_database


def test_pyproject_tool_table_and_explicit_config(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.entrykit]\nlog_level = "debug"\n')
    assert Settings.load(environ={}, cwd=tmp_path).log_level == "debug"
    (tmp_path / "entrykit.toml").write_text('log_level = "warning"\n')
    assert Settings.load(environ={}, cwd=tmp_path).log_level == "warning"
    (tmp_path / "other.toml").write_text('log_level = "error"\n')
    loaded = Settings.load(environ={"ENTRYKIT_CONFIG": "other.toml"}, cwd=tmp_path)
    assert loaded.log_level == "error"
    assert loaded.config_file == tmp_path / "other.toml"


def test_pyproject_without_tool_table_is_no_config(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    assert Settings.load(environ={}, cwd=tmp_path).config_file is None


def test_models_tables_and_lists(tmp_path: Path) -> None:
    (tmp_path / "entrykit.toml").write_text(
        'hf_models = ["org/a@v1"]\n'
        "hf_include = ['*.json', '*.safetensors']\n"
        "[[models]]\nrepo = 'org/data'\ntype = 'dataset'\nrevision = 'abc'\n"
        "include = ['*.parquet']\nexclude = 'raw/*'\n"
    )
    loaded = Settings.load(environ={}, cwd=tmp_path)
    assert loaded.hf_models == (
        ModelSpec("org/a", "model", "v1"),
        ModelSpec("org/data", "dataset", "abc", ("*.parquet",), ("raw/*",)),
    )
    assert loaded.hf_include == ("*.json", "*.safetensors")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("org/model", ModelSpec("org/model")),
        ("dataset:org/set@main", ModelSpec("org/set", "dataset", "main")),
        ("space:o/s", ModelSpec("o/s", "space")),
        ("o/m@refs/pr/1", ModelSpec("o/m", "model", "refs/pr/1")),
        ("gpt2", ModelSpec("gpt2")),  # the Hub's canonical repos have no owner
        ("bert-base-uncased@main", ModelSpec("bert-base-uncased", "model", "main")),
    ],
)
def test_repo_specs(text: str, expected: ModelSpec) -> None:
    assert ModelSpec.parse(text) == expected
    assert ModelSpec.parse(str(expected)) == expected


@pytest.mark.parametrize("text", ["a/b/c", "weird:o/m", "o/m@", "/m", "o/", "o/../m", ".."])
def test_bad_repo_specs(text: str) -> None:
    with pytest.raises(ConfigError):
        ModelSpec.parse(text)


@pytest.mark.parametrize(
    "revision", ["../../../pwned", "a/../b", "/etc", "a//b", "a\\b", ".", "refs/pr/", "a\x00b"]
)
def test_revisions_that_could_leave_the_cache_are_config_errors(revision: str) -> None:
    with pytest.raises(ConfigError, match="revision"):
        ModelSpec.parse(f"o/n@{revision}")
    with pytest.raises(ConfigError, match="revision"):
        Settings.load(environ={"ENTRYKIT_HF_MODELS": f"o/n@{revision}"}, cwd=Path("/nonexistent"))


def test_a_pyproject_whose_tool_is_not_a_table_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("tool = 'x'\n")
    with pytest.raises(ConfigError, match=r"pyproject\.toml"):
        Settings.load(environ={}, cwd=tmp_path)
    (tmp_path / "pyproject.toml").write_text("[tool]\nentrykit = 3\n")
    with pytest.raises(ConfigError, match=r"\[tool.entrykit\]"):
        Settings.load(environ={}, cwd=tmp_path)


@pytest.mark.parametrize(
    ("variable", "value", "reason"),
    [
        ("ENTRYKIT_LOG_LEVEL", "loud", "expected one of"),
        ("ENTRYKIT_LOG_FORMAT", "xml", "expected one of"),
        ("ENTRYKIT_WAIT", "sometimes", "expected one of"),
        ("ENTRYKIT_WAIT_TCP", "db", "is not HOST:PORT"),
        ("ENTRYKIT_WAIT_TCP", "db:99999", "is not HOST:PORT"),
        ("ENTRYKIT_WAIT_HTTP", "ftp://x", "is not an http"),
        ("ENTRYKIT_WAIT_TIMEOUT", "-1", "0 or more"),
        ("ENTRYKIT_WAIT_TIMEOUT", "nan", "0 or more"),
        ("ENTRYKIT_MIGRATE", "later", "expected one of"),
        ("ENTRYKIT_MIGRATE_URL", "mongodb://x/y", "expected a URL"),
        ("DATABASE_URL", "mongodb://h/db", "expected a URL"),
        ("ENTRYKIT_DATABASE_URL", "sqlite://relative.db", "sqlite:///PATH"),
        ("ENTRYKIT_MIGRATE_REVISION", " ", "must not be empty"),
        ("ENTRYKIT_MIGRATE_LOCK_TIMEOUT", "forever", "seconds"),
        ("ENTRYKIT_MIGRATE_UNKNOWN", "maybe", "expected one of"),
        ("ENTRYKIT_HF_MODELS", "not a spec", "expected [TYPE:][OWNER/]NAME"),
        ("ENTRYKIT_HF_OFFLINE", "perhaps", "expected a boolean"),
        ("ENTRYKIT_HF_MAX_WORKERS", "0", "from 1 to 64"),
        ("ENTRYKIT_HF_MAX_WORKERS", "many", "from 1 to 64"),
    ],
)
def test_every_bad_value_names_the_setting_and_source(
    tmp_path: Path, variable: str, value: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as error:
        Settings.load(environ={variable: value}, cwd=tmp_path)
    assert error.value.exit_code == 10
    assert f"{variable} (env)" in str(error.value)
    assert reason in str(error.value)


@pytest.mark.parametrize(
    ("toml", "reason"),
    [
        ("wait_timeout = true", "expected a number"),
        ("wait_timeout = [1]", "expected a number"),
        ("no_such_key = 1", "unknown key 'no_such_key'"),
        ("hf_max_workers = 2.5", "from 1 to 64"),
        ("[[models]]\ntype = 'model'", "has no 'repo'"),
        ("[[models]]\nrepo = 'o/m'\nflavour = 'x'", "unknown key 'flavour'"),
        ("[[models]]\nrepo = 'o/m'\ntype = 'weights'", "expected one of"),
        ("models = 'o/m'", "expected [[models]] tables"),
        ("wait_timeout = ", "cannot read config file"),
    ],
)
def test_bad_config_file_values_name_key_and_file(tmp_path: Path, toml: str, reason: str) -> None:
    (tmp_path / "entrykit.toml").write_text(toml + "\n")
    with pytest.raises(ConfigError) as error:
        Settings.load(environ={}, cwd=tmp_path)
    assert str(tmp_path / "entrykit.toml") in str(error.value)
    assert reason in str(error.value)


def test_missing_explicit_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ENTRYKIT_CONFIG"):
        Settings.load(environ={"ENTRYKIT_CONFIG": "nope.toml"}, cwd=tmp_path)


@pytest.mark.parametrize(
    ("raw", "value"), [("yes", True), ("OFF", False), ("1", True), ("false", False)]
)
def test_booleans(tmp_path: Path, raw: str, value: bool) -> None:
    assert Settings.load(environ={"ENTRYKIT_HF_OFFLINE": raw}, cwd=tmp_path).hf_offline is value


def test_migrate_and_wait_accept_booleans(tmp_path: Path) -> None:
    loaded = Settings.load(
        environ={"ENTRYKIT_MIGRATE": "true", "ENTRYKIT_WAIT": "off"}, cwd=tmp_path
    )
    assert (loaded.migrate, loaded.wait) == ("1", "0")


def test_bad_config_file_through_the_cli_is_exit_10(tmp_path: Path) -> None:
    (tmp_path / "entrykit.toml").write_text("wait_timout = 5\n")
    result = run_entrykit(["true"], clean_env(tmp_path), cwd=tmp_path)
    assert result.returncode == 10
    assert "unknown key 'wait_timout'" in result.stderr


def test_plan_shows_each_source(tmp_path: Path) -> None:
    (tmp_path / "entrykit.toml").write_text("wait_timeout = 30\n")
    env = clean_env(tmp_path, ENTRYKIT_LOG_LEVEL="debug")
    result = run_entrykit(["plan", "--", "uvicorn", "app:app"], env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = {
        line.split()[0]: line.split()
        for line in result.stdout.splitlines()
        if line.startswith("  ")
    }
    assert lines["wait_timeout"][1:] == ["30", f"file:{tmp_path / 'entrykit.toml'}"]
    assert lines["log_level"][1:] == ["debug", "env"]
    assert lines["migrate"][1:] == ["0", "default"]
    assert "exec: uvicorn app:app" in result.stdout


def test_every_setting_has_a_variable() -> None:
    names = variable_names()
    for setting in SETTING_NAMES:
        assert any(var.lower().endswith(setting) for var in names), setting


# --- property-based: any value gives a setting or a ConfigError, never a traceback ---

_VARIABLES = [var for var in variable_names() if var != "ENTRYKIT_CONFIG"]


@given(st.sampled_from(_VARIABLES), st.text(max_size=40))
@settings(max_examples=500, deadline=None)
def test_any_environment_value_parses_or_is_a_config_error(variable: str, value: str) -> None:
    try:
        Settings.load(environ={variable: value}, cwd=Path("/nonexistent"))
    except ConfigError as error:
        assert variable in str(error)


@given(st.text(max_size=40))
@settings(max_examples=300, deadline=None)
def test_any_repo_spec_parses_or_is_a_config_error(text: str) -> None:
    try:
        spec = ModelSpec.parse(text)
    except ConfigError:
        return
    assert spec.repo_id.count("/") <= 1
    assert ".." not in spec.repo_id
    assert ModelSpec.parse(str(spec)) == spec


def test_prestart_lines_are_split_like_a_shell_and_named(tmp_path: Path) -> None:
    text = "python -m app.initial_data\n\n# a comment\n./manage.py collectstatic --noinput\necho 'a b'\n"
    settings = Settings.load(environ={"ENTRYKIT_PRESTART": text}, cwd=tmp_path)
    assert [(c.name, c.argv) for c in settings.prestart] == [
        ("app.initial_data", ("python", "-m", "app.initial_data")),
        ("manage.py", ("./manage.py", "collectstatic", "--noinput")),
        ("echo", ("echo", "a b")),
    ]
    assert not any(c.once for c in settings.prestart)


def test_command_tables_and_the_environment_winning_over_them(tmp_path: Path) -> None:
    (tmp_path / "entrykit.toml").write_text(
        "[[commands]]\n"
        'name = "initial-data"\n'
        'run = ["python", "-m", "app.initial_data"]\n'
        "once = true\n"
        "timeout = 120\n"
        'env = { SEED = "1" }\n'
        "[[commands]]\n"
        'run = "python manage.py collectstatic --noinput"\n'
    )
    first, second = Settings.load(environ={}, cwd=tmp_path).prestart
    assert first == CommandSpec(
        "initial-data", ("python", "-m", "app.initial_data"), True, 120.0, (("SEED", "1"),)
    )
    assert second.name == "python" and second.argv[-1] == "--noinput" and not second.once
    replaced = Settings.load(environ={"ENTRYKIT_PRESTART": "true"}, cwd=tmp_path)
    assert [c.argv for c in replaced.prestart] == [("true",)]
    assert replaced.sources["prestart"] == "env"


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('name = "x"', "commands[1] (FILE): no 'run'"),
        ('run = "x"\nwhen = 1', "commands[1] (FILE): unknown key 'when'"),
        ('run = "echo \'unbalanced"', "commands[1].run (FILE): cannot split"),
        ("run = []", "commands[1].run (FILE): empty command"),
        (
            'run = "x"\nonce = "maybe"',
            "commands[1].once (FILE): expected true or false, got 'maybe'",
        ),
        ('run = "x"\ntimeout = -1', "commands[1].timeout (FILE): expected a finite number"),
        ('run = "x"\nname = "a b"', "commands[1].name (FILE): 'a b': a letter or digit, then"),
        ('run = "x"\nenv = 3', "commands[1].env (FILE): expected a table of strings, got 3"),
    ],
)
def test_bad_command_tables_name_the_table(tmp_path: Path, table: str, message: str) -> None:
    (tmp_path / "entrykit.toml").write_text(f"[[commands]]\n{table}\n")
    with pytest.raises(ConfigError) as error:
        Settings.load(environ={}, cwd=tmp_path)
    expected = message.replace("FILE", f"file:{tmp_path / 'entrykit.toml'}")
    assert str(error.value).startswith(expected)


def test_migrate_command_must_split_like_a_shell(tmp_path: Path) -> None:
    settings = Settings.load(
        environ={"ENTRYKIT_MIGRATE_COMMAND": "python manage.py migrate --noinput"}, cwd=tmp_path
    )
    assert settings.migrate_command == "python manage.py migrate --noinput"
    with pytest.raises(ConfigError, match="ENTRYKIT_MIGRATE_CHECK_COMMAND"):
        Settings.load(environ={"ENTRYKIT_MIGRATE_CHECK_COMMAND": "echo 'x"}, cwd=tmp_path)


def test_models_tables_take_a_local_dir_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "entrykit.toml").write_text(
        '[[models]]\nrepo = "gpt2"\nlocal_dir = "models/gpt2"\n'
    )
    (spec,) = Settings.load(environ={}, cwd=tmp_path).hf_models
    assert spec.repo_id == "gpt2" and spec.local_dir == tmp_path / "models/gpt2"


@pytest.mark.parametrize(
    "key, said",
    [
        ("local_dir = 5", "local_dir must be a string, not int"),
        ('local_dir = ""', "local_dir is empty"),
        ("revision = 3", "revision must be a string, not int"),
        ("type = 1", "type must be a string, not int"),
        ('type = "model"', "repo says dataset, type says model"),
    ],
)
def test_models_table_values_of_the_wrong_type_are_refused(
    tmp_path: Path, key: str, said: str
) -> None:
    (tmp_path / "entrykit.toml").write_text(f'[[models]]\nrepo = "dataset:squad"\n{key}\n')
    with pytest.raises(ConfigError, match="table 1: " + said):
        Settings.load(environ={}, cwd=tmp_path)
    assert not (tmp_path / "5").exists()


def test_a_models_table_revision_that_contradicts_the_repo_is_refused(tmp_path: Path) -> None:
    (tmp_path / "entrykit.toml").write_text('[[models]]\nrepo = "a/b@main"\nrevision = "v1"\n')
    with pytest.raises(ConfigError, match="table 1: repo says @main, revision says v1"):
        Settings.load(environ={}, cwd=tmp_path)


def test_a_models_table_local_dir_may_start_at_home(tmp_path: Path) -> None:
    (tmp_path / "entrykit.toml").write_text('[[models]]\nrepo = "gpt2"\nlocal_dir = "~/m/gpt2"\n')
    (spec,) = Settings.load(environ={}, cwd=tmp_path).hf_models
    assert spec.local_dir == Path.home() / "m" / "gpt2"
    # an unknown ~user stays as written (os.path.expanduser, as hf does), never a traceback
    (tmp_path / "entrykit.toml").write_text(
        '[[models]]\nrepo = "gpt2"\nlocal_dir = "~nouserzz/m"\n'
    )
    (spec,) = Settings.load(environ={}, cwd=tmp_path).hf_models
    assert spec.local_dir == tmp_path / "~nouserzz" / "m"


def test_a_models_table_type_that_agrees_with_the_repo_is_fine(tmp_path: Path) -> None:
    (tmp_path / "entrykit.toml").write_text(
        '[[models]]\nrepo = "dataset:squad"\ntype = "dataset"\n'
    )
    (spec,) = Settings.load(environ={}, cwd=tmp_path).hf_models
    assert (spec.repo_id, spec.repo_type) == ("squad", "dataset")


def test_a_check_command_needs_a_migrate_command(tmp_path: Path) -> None:
    """Alembic has its own check: a check command alone was silently ignored."""
    with pytest.raises(ConfigError) as error:
        Settings.load(environ={"ENTRYKIT_MIGRATE_CHECK_COMMAND": "true"}, cwd=tmp_path)
    assert str(error.value) == (
        "ENTRYKIT_MIGRATE_CHECK_COMMAND (env): needs ENTRYKIT_MIGRATE_COMMAND "
        "(Alembic has its own check)"
    )
    (tmp_path / "entrykit.toml").write_text('migrate_check_command = "flask db check"\n')
    with pytest.raises(ConfigError, match=r"^migrate_check_command \(file:.*\): needs"):
        Settings.load(environ={}, cwd=tmp_path)
    both = {"ENTRYKIT_MIGRATE_COMMAND": "flask db upgrade"}
    assert Settings.load(environ=both, cwd=tmp_path).migrate_check_command == "flask db check"
    (tmp_path / "entrykit.toml").unlink()
    marker = tmp_path / "migrated"
    env = clean_env(
        tmp_path,
        DATABASE_URL=f"sqlite:///{tmp_path}/app.db",
        ENTRYKIT_MIGRATE="1",
        ENTRYKIT_MIGRATE_CHECK_COMMAND=f"touch {marker}",
    )
    result = run_entrykit(["run", "--", "true"], env, cwd=tmp_path)
    assert result.returncode == 10, result.stderr
    assert "needs ENTRYKIT_MIGRATE_COMMAND (Alembic has its own check)" in result.stderr
    assert not marker.exists()
