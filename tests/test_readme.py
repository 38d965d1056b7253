"""The README stays true: every command is shown, and the test command is what CI runs.

The full reference (every option, variable, default and exit code) is docs/reference.md,
checked by test_reference.py.
"""

from __future__ import annotations

import re
from pathlib import Path

from entrykit.cli import _build_group
from entrykit.options import SUBCOMMANDS

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()


def test_every_subcommand_is_documented_and_has_help() -> None:
    group = _build_group()
    assert set(group.commands) == set(SUBCOMMANDS)
    for name, command in group.commands.items():
        assert f"`entrykit {name}" in README, name
        assert command.help and len(command.help) > 20, name


def test_readme_points_to_the_reference() -> None:
    assert "docs/reference.md" in README


def test_ci_runs_the_readme_test_command() -> None:
    command = re.search(r"```bash\n(python3 -m venv .venv && .*pytest)\n```", README)
    assert command is not None
    assert command.group(1) in (ROOT / ".ci" / "run").read_text()
