"""How a start-up command's output becomes log lines (docs/commands.md): stdout and stderr as
one stream in the order written, lines over 65,536 characters in pieces that never cut a
secret nor a character, the last lines read after the command ends, and a command line shown
with its control characters escaped. Real `entrykit run` processes running real commands."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from entrykit_process import clean_env, run_entrykit

PIECE = 65536
API_KEY = "S3cretValue"
DB_PASSWORD = "p@ss/w0rd:%9"
# The forms a command may print them in; each is registered by entrykit, so each is hidden.
FORMS = (API_KEY, DB_PASSWORD, quote(DB_PASSWORD, safe=""))
LOG_LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO |WARNING|ERROR) ")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "api_key").write_text(API_KEY + "\n")
    (secrets / "db_password").write_text(DB_PASSWORD + "\n")
    return clean_env(secrets, ENTRYKIT_SECRETS="API_KEY,DB_PASSWORD")


def messages(stderr: str, fmt: str, step: str = "prestart") -> list[str]:
    """The message of each log line of ``step``."""
    if fmt == "json":
        records = [json.loads(line) for line in stderr.splitlines()]
        return [record["msg"] for record in records if record["step"] == step]
    parts = [line.split(None, 3) for line in stderr.splitlines() if LOG_LINE.match(line)]
    return [part[3] for part in parts if len(part) == 4 and part[2] == step]


def output_of(name: str, logged: list[str]) -> list[str]:
    """The output lines (or pieces) logged for command ``name``."""
    prefix = f"{name} | "
    return [message.removeprefix(prefix) for message in logged if message.startswith(prefix)]


def run_printing(
    lines: list[str], env: dict[str, str], tmp_path: Path, fmt: str = "text"
) -> list[str]:
    """Run a start-up command that prints ``lines`` (each ended by a newline) as UTF-8, and
    return the pieces entrykit logged for it."""
    (tmp_path / "lines.json").write_text(json.dumps(lines))
    (tmp_path / "printer.py").write_text(
        "import json, sys\n"
        "for line in json.load(open('lines.json')):\n"
        "    sys.stdout.buffer.write(line.encode() + b'\\n')\n"
    )
    run_env = {**env, "ENTRYKIT_PRESTART": "python3 printer.py", "ENTRYKIT_LOG_FORMAT": fmt}
    result = run_entrykit(["run", "--", "true"], run_env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for form in FORMS:
        assert form not in result.stderr + result.stdout
    return output_of("python3", messages(result.stderr, fmt))


def masked(text: str) -> str:
    for form in sorted(FORMS, key=len, reverse=True):
        text = text.replace(form, "***")
    return text


# -- long lines: pieces that cut no secret and no character ------------------------------------


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_secret_near_a_cut_is_never_logged_in_two_halves(
    env: dict[str, str], tmp_path: Path, fmt: str
) -> None:
    # Each form starts at every offset from 20 before to 20 after the first cut, so that
    # some straddle it; one more line holds two secrets around the two cuts of three pieces.
    lines = [
        f"{'x' * (PIECE + offset)}{form}tail"
        for form in FORMS
        for offset in range(-20 - len(form), 21)
    ]
    three_pieces = f"{'a' * (PIECE - 4)}{API_KEY}{'b' * (PIECE - 9)}{FORMS[2]}{'c' * 100}"
    lines.append(three_pieces)
    pieces = run_printing(lines, env, tmp_path, fmt)

    assert "".join(pieces) == "".join(masked(line) for line in lines)  # nothing lost or doubled
    assert len(pieces) == sum(1 if len(line) <= PIECE else 2 for line in lines[:-1]) + 3
    assert all(len(piece) <= PIECE for piece in pieces)


def test_lines_up_to_the_limit_are_one_piece_and_no_character_is_cut(
    env: dict[str, str], tmp_path: Path
) -> None:
    lines = [
        "x" * PIECE,  # exactly the limit: one piece, no empty second one
        "y" * (PIECE + 1),
        "a" + "é" * 40_000,  # 80,001 bytes but 40,001 characters: one piece
        "a" + "é" * 70_000,  # the 65,536th byte is inside an "é"
        "€" * (PIECE + 3),
    ]
    pieces = run_printing(lines, env, tmp_path)

    assert "\ufffd" not in "".join(pieces)
    assert "".join(pieces) == "".join(lines)
    assert [len(piece) for piece in pieces] == [PIECE, PIECE, 1, 40_001, PIECE, 4465, PIECE, 3]


# -- the last lines: read until the pipe is silent --------------------------------------------


def test_the_last_lines_of_a_command_that_ends_with_a_backlog_are_logged(
    env: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "backlog.py").write_text(
        "import os\n"
        "os.write(1, b'a\\n' * 32000 + b'LAST-OUT\\n')\n"
        "os.write(2, b'b\\n' * 32000 + b'LAST-ERR\\n')\n"
        "raise SystemExit(3)\n"
    )
    env["ENTRYKIT_PRESTART"] = "python3 backlog.py"
    result = run_entrykit(["run", "--", "true"], env, cwd=tmp_path)

    assert result.returncode == 50, result.stderr[-2000:]
    output = output_of("python3", messages(result.stderr, "text"))
    assert len(output) == 64_002
    assert output[-1] == "LAST-ERR"
    assert output[32_000] == "LAST-OUT"
    assert "command python3 backlog.py: failed: status 3" in result.stderr


def run_timed(env: dict[str, str], tmp_path: Path, prestart: str) -> tuple[float, str]:
    started = time.monotonic()
    result = run_entrykit(
        ["run", "--", "true"], {**env, "ENTRYKIT_PRESTART": prestart}, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return time.monotonic() - started, result.stderr


@pytest.fixture
def daemons() -> Iterator[list[int]]:
    """Process ids to kill when the test ends (processes that escaped the command's group)."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_a_process_left_in_the_group_is_killed_and_does_not_hold_entrykit(
    env: dict[str, str], tmp_path: Path
) -> None:
    baseline, _ = run_timed(env, tmp_path, "sh -c 'echo started'")
    seconds, stderr = run_timed(env, tmp_path, "sh -c 'sleep 30 & echo started'")

    assert "sh | started" in stderr
    assert seconds - baseline < 1.0  # the group is killed: the pipe ends at once


def test_a_silent_process_that_escaped_the_group_holds_entrykit_about_a_second(
    env: dict[str, str], tmp_path: Path, daemons: list[int]
) -> None:
    (tmp_path / "escape.py").write_text(
        "import subprocess\n"
        "daemon = subprocess.Popen(['sleep', '30'], start_new_session=True)\n"
        "print('daemon', daemon.pid, flush=True)\n"
    )
    baseline, _ = run_timed(env, tmp_path, "python3 -c 'print(1)'")
    seconds, stderr = run_timed(env, tmp_path, "python3 escape.py")
    daemons += [int(line.split()[-1]) for line in stderr.splitlines() if "python3 | daemon" in line]

    assert len(daemons) == 1
    assert 0.8 < seconds - baseline < 2.5  # one silent second, then entrykit moves on


@pytest.mark.slow
def test_a_chatty_process_that_escaped_the_group_holds_entrykit_at_most_ten_seconds(
    env: dict[str, str], tmp_path: Path, daemons: list[int]
) -> None:
    (tmp_path / "chatty.py").write_text(
        "import subprocess, sys\n"
        'ticker = \'import time\\nwhile True:\\n    print("tick", flush=True)\\n'
        "    time.sleep(0.1)\\n'\n"
        "daemon = subprocess.Popen([sys.executable, '-c', ticker], start_new_session=True)\n"
        "print('daemon', daemon.pid, flush=True)\n"
    )
    baseline, _ = run_timed(env, tmp_path, "python3 -c 'print(1)'")
    seconds, stderr = run_timed(env, tmp_path, "python3 chatty.py")
    daemons += [int(line.split()[-1]) for line in stderr.splitlines() if "python3 | daemon" in line]

    assert len(daemons) == 1
    assert 9.0 < seconds - baseline < 12.0
    assert stderr.count("python3 | tick") > 50  # it was read all along


# -- order: one stream, as `2>&1` would give it ------------------------------------------------


def test_stdout_and_stderr_are_logged_in_the_order_written(
    env: dict[str, str], tmp_path: Path
) -> None:
    runs = 20
    env["ENTRYKIT_PRESTART"] = "\n".join(
        ["sh -c 'echo L1; echo L2 >&2; echo L3; echo L4 >&2'"] * runs
    )
    result = run_entrykit(["run", "--", "true"], env, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert output_of("sh", messages(result.stderr, "text")) == ["L1", "L2", "L3", "L4"] * runs


# -- a command line is shown with its control characters escaped --------------------------------


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_newline_in_a_command_line_cannot_forge_a_log_line(
    env: dict[str, str], tmp_path: Path, fmt: str
) -> None:
    forged = "2026-01-01T00:00:00.000Z INFO  prestart all good"
    (tmp_path / "entrykit.toml").write_text(
        f'[[commands]]\nname = "seed"\nrun = ["sh", "-c", "exit 2\\n{forged}", "\\u001b[31mred"]\n'
    )
    result = run_entrykit(["run", "--", "true"], {**env, "ENTRYKIT_LOG_FORMAT": fmt}, cwd=tmp_path)

    assert result.returncode == 50, result.stderr
    assert "\x1b" not in result.stderr
    shown = f"sh -c $'exit 2\\n{forged}' $'\\x1b[31mred'"  # bash's $'..': pasted, it runs
    logged = messages(result.stderr, fmt)
    assert f"seed: {shown}" in logged
    failure = f"command seed ({shown}): failed: status 2 (exit 50)"
    assert any(message.endswith(f" s: {failure}") for message in logged)
    if fmt == "text":
        assert all(LOG_LINE.match(line) for line in result.stderr.splitlines())
        assert not any(line.startswith(forged) for line in result.stderr.splitlines())
