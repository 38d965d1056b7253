"""The README stays true: every command, variable and exit code is documented."""

from __future__ import annotations

import re
from pathlib import Path

from entrykit import errors
from entrykit.cli import SUBCOMMANDS, _build_group
from entrykit.settings import variable_names

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()


def test_every_subcommand_is_documented_and_has_help() -> None:
    group = _build_group()
    assert set(group.commands) == set(SUBCOMMANDS)
    for name, command in group.commands.items():
        assert f"`entrykit {name}" in README, name
        assert command.help and len(command.help) > 20, name


def test_every_variable_is_documented() -> None:
    for variable in variable_names():
        assert f"`{variable}`" in README, variable


def test_every_variable_in_the_code_is_a_setting() -> None:
    """No module reads an ENTRYKIT_ variable that is not a documented setting."""
    documented = set(variable_names())
    for path in (ROOT / "src" / "entrykit").glob("*.py"):
        for variable in re.findall(r"\bENTRYKIT_[A-Z_]+\b", path.read_text()):
            assert variable in documented, (path.name, variable)


def test_every_exit_code_is_in_the_table() -> None:
    codes = {value for name, value in vars(errors).items() if name.startswith("EXIT_")}
    table = README.split("## Exit codes", 1)[1].split("##", 1)[0]
    documented = {int(code) for code in re.findall(r"^\| (\d+)", table, re.M)}
    documented |= {126, 127}
    assert codes <= documented, codes - documented


def test_ci_runs_the_readme_test_command() -> None:
    command = re.search(r"```bash\n(python3 -m venv .venv && .*pytest)\n```", README)
    assert command is not None
    assert command.group(1) in (ROOT / ".ci" / "run").read_text()
