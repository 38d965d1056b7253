"""exec, exit codes and signals, on real processes."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from entrykit_process import ENTRYKIT, clean_env, run_entrykit


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "secrets").mkdir()
    return clean_env(tmp_path / "secrets")


def test_the_command_keeps_entrykits_pid(env: dict[str, str]) -> None:
    process = subprocess.Popen(
        [*ENTRYKIT, "sh", "-c", "echo $$"], env=env, stdout=subprocess.PIPE, text=True
    )
    out, _ = process.communicate(timeout=30)
    assert process.returncode == 0
    assert int(out) == process.pid


def test_run_double_dash_form_and_python_dash_m(env: dict[str, str]) -> None:
    result = run_entrykit(["run", "--", "sh", "-c", "echo hello; exit 7"], env)
    assert result.returncode == 7
    assert result.stdout == "hello\n"
    exec_line = [line for line in result.stderr.splitlines() if " exec " in line]
    assert exec_line and "total" in exec_line[0]


def test_double_dash_without_run(env: dict[str, str]) -> None:
    result = run_entrykit(["--", "sh", "-c", "exit 5"], env)
    assert result.returncode == 5


def test_run_without_command_runs_the_steps_and_exits_0(env: dict[str, str]) -> None:
    result = run_entrykit(["run"], env)
    assert result.returncode == 0, result.stderr
    assert "no command given" in result.stderr


def test_no_arguments_is_usage_and_exit_2(env: dict[str, str]) -> None:
    result = run_entrykit([], env)
    assert result.returncode == 2
    assert "usage: entrykit" in result.stderr
    assert result.stdout == ""


def test_unknown_option_is_exit_2(env: dict[str, str]) -> None:
    result = run_entrykit(["wait", "--no-such-option"], env)
    assert result.returncode == 2
    assert "no-such-option" in result.stderr


def test_missing_command_is_127(env: dict[str, str]) -> None:
    result = run_entrykit(["no-such-command-xyz"], env)
    assert result.returncode == 127
    assert "command not found: no-such-command-xyz" in result.stderr


def test_command_that_is_not_executable_is_126(env: dict[str, str], tmp_path: Path) -> None:
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    result = run_entrykit([str(script)], env)
    assert result.returncode == 126
    assert "permission denied" in result.stderr


def test_bad_setting_is_10_naming_it_and_its_source(env: dict[str, str]) -> None:
    result = run_entrykit(["true"], {**env, "ENTRYKIT_WAIT_TIMEOUT": "soon"})
    assert result.returncode == 10
    assert "ENTRYKIT_WAIT_TIMEOUT (env)" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_missing_secret_is_11_and_command_does_not_run(env: dict[str, str]) -> None:
    result = run_entrykit(
        ["touch", "/tmp/entrykit-should-not-exist"], {**env, "ENTRYKIT_SECRETS": "API_KEY"}
    )
    assert result.returncode == 11
    assert "API_KEY" in result.stderr
    assert not os.path.exists("/tmp/entrykit-should-not-exist")


def test_sigpipe_is_reset_so_yes_head_is_quiet(env: dict[str, str]) -> None:
    result = run_entrykit(["sh", "-c", "yes | head -1"], env)
    assert result.returncode == 0
    assert result.stdout == "y\n"
    assert "Broken pipe" not in result.stderr


def test_signal_dispositions_and_mask_are_reset(env: dict[str, str]) -> None:
    # /proc/self/status of the exec'd command: nothing ignored, nothing blocked.
    result = run_entrykit(["grep", "-E", "^(SigIgn|SigBlk)", "/proc/self/status"], env)
    fields = dict(line.split(":\t") for line in result.stdout.splitlines())
    assert int(fields["SigBlk"], 16) == 0
    assert int(fields["SigIgn"], 16) == 0


def test_stdout_written_before_exec_is_not_lost(env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    with out.open("w") as file:
        subprocess.run([*ENTRYKIT, "plan"], env=env, stdout=file, check=True)
    assert "steps:" in out.read_text()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_line(process: subprocess.Popen[str], needle: str, timeout: float = 20) -> None:
    assert process.stderr is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if needle in line:
            return
    raise AssertionError(f"no line with {needle!r}")


@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGQUIT, 131)]
)
def test_signal_during_a_step_exits_128_plus_n_within_a_second(
    env: dict[str, str], signum: int, code: int
) -> None:
    step_env = {**env, "ENTRYKIT_WAIT_TCP": f"127.0.0.1:{_closed_port()}"}
    process = subprocess.Popen(
        [*ENTRYKIT, "sleep", "60"], env=step_env, stderr=subprocess.PIPE, text=True
    )
    _wait_for_line(process, "wait     start")
    time.sleep(0.3)
    sent = time.monotonic()
    process.send_signal(signum)
    assert process.wait(timeout=5) == code
    assert time.monotonic() - sent < 1.0


@pytest.mark.skipif(shutil.which("unshare") is None or os.geteuid() != 0, reason="needs root")
def test_sigterm_as_pid_1_of_a_pid_namespace(env: dict[str, str]) -> None:
    step_env = {**env, "ENTRYKIT_WAIT_TCP": f"127.0.0.1:{_closed_port()}"}
    process = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount-proc", *ENTRYKIT, "sleep", "60"],
        env=step_env,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_line(process, "wait     start")
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
    pid_one = int(children[0])
    status = Path(f"/proc/{pid_one}/status").read_text()
    assert f"NSpid:\t{pid_one}\t1" in status  # it really is PID 1 in its namespace
    time.sleep(0.3)
    sent = time.monotonic()
    os.kill(pid_one, signal.SIGTERM)
    assert process.wait(timeout=5) == 143
    assert time.monotonic() - sent < 1.0


def test_version_and_help_everywhere(env: dict[str, str]) -> None:
    for command in (
        [],
        ["run"],
        ["wait"],
        ["migrate"],
        ["prefetch"],
        ["secrets"],
        ["healthcheck"],
        ["plan"],
    ):
        version = run_entrykit([*command, "--version"], env)
        assert version.returncode == 0, (command, version.stderr)
        assert "0.1.0" in version.stdout
        helped = run_entrykit([*command, "--help"], env)
        assert helped.returncode == 0, (command, helped.stderr)
        assert "Usage:" in helped.stdout


def test_python_api_run_execs_the_command(env: dict[str, str]) -> None:
    script = (
        "import entrykit, os\n"
        "entrykit.run(wait_timeout=5)  # no command: the steps, then back here\n"
        "print('steps done', flush=True)\n"
        "entrykit.run(['sh', '-c', 'echo exec pid $$; exit 4'])\n"
        "print('never reached')\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True
    )
    out, _ = process.communicate(timeout=30)
    assert process.returncode == 4
    assert out.splitlines() == ["steps done", f"exec pid {process.pid}"]


MIGRATION = """\
from alembic import op
import sqlalchemy as sa

revision = "a1"
down_revision = None


def upgrade():
    op.create_table("applied", sa.Column("x", sa.Integer))


def downgrade():
    pass
"""

ENV_PY = """\
from alembic import context

context.configure(connection=context.config.attributes["connection"])
with context.begin_transaction():
    context.run_migrations()
"""


@pytest.mark.parametrize(("program", "code"), [("no-such-program-xyz", 127), ("script", 126)])
def test_a_command_that_cannot_run_fails_before_the_first_step(
    env: dict[str, str], tmp_path: Path, program: str, code: int
) -> None:
    """A typo in CMD costs no migration: 127 (not found) or 126 (not executable) at once."""
    (tmp_path / "migrations" / "versions").mkdir(parents=True)
    (tmp_path / "migrations" / "env.py").write_text(ENV_PY)
    (tmp_path / "migrations" / "versions" / "a1.py").write_text(MIGRATION)
    (tmp_path / "alembic.ini").write_text("[alembic]\nscript_location = migrations\n")
    (tmp_path / "script").write_text("#!/bin/sh\n")
    (tmp_path / "script").chmod(0o644)
    database = tmp_path / "app.db"
    migrate = {**env, "DATABASE_URL": f"sqlite:///{database}", "ENTRYKIT_MIGRATE": "1"}
    command = str(tmp_path / program) if program == "script" else program
    result = run_entrykit([command], migrate, cwd=tmp_path)
    assert result.returncode == code, result.stderr
    assert "migrate  start" not in result.stderr
    assert not database.exists()
    # the same project migrates when the command can run
    result = run_entrykit(["true"], migrate, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert database.exists()


CLOSE_STDOUT = ["sh", "-c", 'exec "$@" >&-', "sh"]
FULL_STDOUT = ["sh", "-c", 'exec "$@" >/dev/full', "sh"]


@pytest.mark.parametrize(
    "args", [["plan"], ["plan", "--format", "json"], ["secrets"], ["--help"], ["--version"]]
)
def test_unwritable_stdout_is_one_line_and_exit_1(env: dict[str, str], args: list[str]) -> None:
    """As coreutils: "write error: No space left on device", exit 1, never a traceback."""
    Path(env["ENTRYKIT_SECRETS_DIR"], "api_key").write_text("key-1234")
    env = {**env, "ENTRYKIT_SECRETS": "API_KEY"}  # so that `secrets` has a line to print
    result = run_entrykit(args, env, prefix=FULL_STDOUT)
    closed = run_entrykit(args, env, prefix=CLOSE_STDOUT)
    for outcome, reason in ((result, "No space left on device"), (closed, "stdout is closed")):
        assert outcome.returncode == 1, outcome.stderr
        lines = outcome.stderr.strip().splitlines()
        assert len(lines) == 1, outcome.stderr
        assert f"write error: {reason} (exit 1)" in lines[0]


def test_check_command_searches_path_as_execvp_does(tmp_path: Path) -> None:
    from entrykit.errors import CommandNotExecutable, CommandNotFound
    from entrykit.launch import check_command

    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    (first / "tool").write_text("#!/bin/sh\n")  # not executable: skipped, as execvp does
    (first / "folder-tool").mkdir()
    path = {"PATH": f"{first}:{second}"}
    with pytest.raises(CommandNotExecutable):
        check_command(["tool"], path)
    with pytest.raises(CommandNotExecutable):
        check_command(["folder-tool"], path)
    (second / "tool").write_text("#!/bin/sh\n")
    (second / "tool").chmod(0o755)
    check_command(["tool"], path)
    with pytest.raises(CommandNotFound):
        check_command(["no-such-tool"], path)
    with pytest.raises(CommandNotFound):
        check_command([str(first / "missing")], path)
    check_command([str(second / "tool")], {})


def binfmt_misc_formats() -> bool:
    """Whether formats are registered with binfmt_misc (then a file with no #! may run)."""
    try:
        return bool(set(os.listdir("/proc/sys/fs/binfmt_misc")) - {"register", "status"})
    except OSError:
        return False


def test_check_command_reads_the_interpreter_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the kernel will: a #! interpreter that does not exist is 127 naming both, one that
    cannot run 126; a file with no #! line and no binary format 126 (exec's ENOEXEC)."""
    from entrykit.errors import CommandNotExecutable, CommandNotFound
    from entrykit.launch import check_command

    def script(name: str, text: bytes) -> str:
        (tmp_path / name).write_bytes(text)
        (tmp_path / name).chmod(0o755)
        return f"./{name}"

    monkeypatch.chdir(tmp_path)
    (tmp_path / "plain").write_text("not a program\n")
    (tmp_path / "plain").chmod(0o644)
    with pytest.raises(CommandNotFound, match=r"^\./x\.sh: bad interpreter /nonexistent/interp$"):
        check_command([script("x.sh", b"#!/nonexistent/interp -e\necho hi\n")], {})
    with pytest.raises(CommandNotExecutable, match="interpreter plain is not executable"):
        check_command([script("y.sh", b"#! plain\n")], {})  # relative: from the cwd
    with pytest.raises(CommandNotExecutable, match="no interpreter after #!"):
        check_command([script("e.sh", b"#!\n")], {})
    check_command([script("ok.sh", b"#! /bin/sh -e\n")], {})  # blanks after #! are allowed
    check_command([script("long.sh", b"#!/bin/sh" + b" " * 300 + b"\n")], {})
    check_command([sys.executable], {})  # a binary
    if not binfmt_misc_formats():
        with pytest.raises(CommandNotExecutable, match="Exec format error"):
            check_command([script("nosb.sh", b"echo hi\n")], {})


@pytest.mark.parametrize(
    ("text", "code", "message"),
    [
        (b"#!/nonexistent/interp\necho hi\n", 127, "bad interpreter /nonexistent/interp"),
        (b"echo hi\n", 126, "Exec format error"),
    ],
)
def test_cmd_with_a_bad_interpreter_fails_before_any_step(
    env: dict[str, str], tmp_path: Path, text: bytes, code: int, message: str
) -> None:
    if code == 126 and binfmt_misc_formats():
        pytest.skip("binfmt_misc formats are registered: another format may run the file")
    (tmp_path / "x.sh").write_bytes(text)
    (tmp_path / "x.sh").chmod(0o755)
    late = tmp_path / "late"
    env = {**env, "ENTRYKIT_WAIT_FOR": f"file://{late}", "ENTRYKIT_WAIT_TIMEOUT": "5"}
    result = run_entrykit(["./x.sh"], env, cwd=tmp_path)
    assert result.returncode == code, result.stderr
    assert message in result.stderr
    assert "wait     start" not in result.stderr
