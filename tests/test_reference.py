"""docs/reference.md stays true: every command, option, variable, default and exit code."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import click
import pytest

from entrykit import errors
from entrykit.cli import _build_group
from entrykit.options import SUBCOMMANDS
from entrykit.settings import _SETTINGS, CONFIG_VARIABLE, describe, variable_names

ROOT = Path(__file__).parent.parent
REFERENCE = (ROOT / "docs" / "reference.md").read_text()


def _command_sections() -> dict[str, str]:
    parts = re.split(r"^### `entrykit (\w+)`\n", REFERENCE, flags=re.M)
    return {
        name: body.split("\n## ", 1)[0] for name, body in zip(parts[1::2], parts[2::2], strict=True)
    }


def _settings_rows() -> dict[str, str]:
    table = REFERENCE.split("\n## Settings", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^\| `([A-Z_]+)` \| ([^|]+?) \|", table, re.M))


def test_every_command_has_a_section_and_every_section_a_command() -> None:
    group = _build_group()
    assert set(group.commands) == set(SUBCOMMANDS)
    assert set(_command_sections()) == set(group.commands)
    for name, command in group.commands.items():
        assert command.help and len(command.help) > 20, name


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_option_is_in_its_command_section(name: str) -> None:
    command = _build_group().commands[name]
    section = _command_sections()[name]
    for param in command.params:
        if not isinstance(param, click.Option) or param.name in ("help", "version"):
            continue
        long_names = [opt for opt in param.opts if opt.startswith("--")]
        assert any(f"`{opt}" in section for opt in long_names), (name, param.opts)


def test_every_variable_is_a_row_with_its_default() -> None:
    rows = _settings_rows()
    for setting in _SETTINGS:
        shown = describe(setting.default)
        empty = "unset" if setting.default is None else "empty"
        expected = f"`{shown}`" if shown else empty
        for variable in setting.variables:
            assert rows.get(variable) == expected, (variable, rows.get(variable), expected)
    assert rows.get(CONFIG_VARIABLE) == "`./entrykit.toml`"


def test_every_row_is_a_variable() -> None:
    assert set(_settings_rows()) <= set(variable_names())


def test_every_exit_code_is_in_the_table() -> None:
    codes = {value for name, value in vars(errors).items() if name.startswith("EXIT_")}
    table = REFERENCE.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    documented = {int(code) for code in re.findall(r"^\| (\d+)", table, re.M)}
    assert codes <= documented, codes - documented


def test_every_variable_in_the_code_is_a_setting() -> None:
    """No module reads an ENTRYKIT_ variable that is not a documented setting."""
    documented = set(variable_names())
    for path in (ROOT / "src" / "entrykit").rglob("*.py"):
        for variable in re.findall(r"\bENTRYKIT_[A-Z_]+\b", path.read_text()):
            assert variable in documented, (path.name, variable)


def test_project_files_cite_the_projects_own_reference() -> None:
    """Users have docs/reference.md, not the contract the project was built from."""
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    citing = [
        name
        for name in tracked
        if (ROOT / name).is_file()
        and name != "tests/test_reference.py"
        and re.search(r"INTERFACE(\.md)?\b|\.\./shared", (ROOT / name).read_text(errors="replace"))
    ]
    assert citing == []
