"""Start-up commands (docs/commands.md): output as log lines, redaction, failures (exit 50),
timeouts, signals passed to the command's process group, and no process left behind, also as
PID 1. Real `entrykit` processes running real commands."""

from __future__ import annotations

import json
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from entrykit_process import ENTRYKIT, clean_env, run_entrykit

from entrykit.errors import Stopped
from entrykit.pipeline import run as run_pipeline
from entrykit.settings import Settings
from entrykit.specs import CommandSpec

SECRET = "s3cret-value-for-prestart"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "api_token").write_text(SECRET + "\n")
    return clean_env(secrets, ENTRYKIT_SECRETS="API_TOKEN")


def step_of(line: str) -> str:
    parts = line.split()
    return parts[2] if len(parts) > 3 else ""


def prestart_lines(stderr: str) -> list[str]:
    return [line.split(None, 3)[3] for line in stderr.splitlines() if step_of(line) == "prestart"]


def gone(pid: int, within: float = 3.0) -> bool:
    """True once ``pid`` no longer runs (exited, or a zombie someone else must reap)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


def wait_for_file(path: Path, within: float = 10.0) -> str:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.05)
    raise AssertionError(f"{path} never written")


# -- output ----------------------------------------------------------------------------------


def test_each_output_line_is_a_prestart_log_line_in_order_before_exec(
    env: dict[str, str],
) -> None:
    env["ENTRYKIT_PRESTART"] = (
        "sh -c 'echo first line; echo on stderr >&2; printf \"no newline\"'\n"
        "# a comment line\n"
        "python3 -c 'print(\"from python\")'\n"
    )
    result = run_entrykit(["run", "--", "sh", "-c", "echo APP"], env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "APP\n"  # the commands' output is not on stdout
    lines = prestart_lines(result.stderr)
    assert "sh | first line" in lines
    assert "sh | on stderr" in lines
    assert "sh | no newline" in lines
    assert lines.index("sh | first line") < lines.index("python3 | from python")
    stderr = result.stderr.splitlines()
    last_prestart = max(i for i, line in enumerate(stderr) if step_of(line) == "prestart")
    exec_line = next(i for i, line in enumerate(stderr) if step_of(line) == "exec")
    assert last_prestart < exec_line
    assert "prestart" in stderr[exec_line]  # the step's time is in the summary


def test_secrets_and_env_reach_the_command_and_output_is_redacted(
    env: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "show.sh").write_text(
        'echo token=$API_TOKEN seed=$SEED\necho $API_TOKEN >&2\necho "$API_TOKEN" > got\n'
    )
    (tmp_path / "entrykit.toml").write_text(
        '[[commands]]\nname = "show"\nrun = ["sh", "show.sh"]\nenv = { SEED = "42" }\n'
    )
    for fmt in ("text", "json"):
        result = run_entrykit(["run"], {**env, "ENTRYKIT_LOG_FORMAT": fmt}, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert (tmp_path / "got").read_text() == SECRET + "\n"  # the command got the value
        assert SECRET not in result.stderr + result.stdout
        if fmt == "json":
            records = [json.loads(line) for line in result.stderr.splitlines()]
            messages = [r["msg"] for r in records if r["step"] == "prestart"]
        else:
            messages = prestart_lines(result.stderr)
        assert "show | token=*** seed=42" in messages
        assert "show | ***" in messages


# -- failures: exit 50 -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("sh -c 'echo about to fail; exit 3'", "status 3"),
        ("no-such-program-xyz --flag", "not found"),
        ("sh -c 'kill -KILL $$'", "signal SIGKILL"),
    ],
)
def test_a_failing_command_is_exit_50_naming_it(
    env: dict[str, str], tmp_path: Path, line: str, expected: str
) -> None:
    env["ENTRYKIT_PRESTART"] = f"{line}\ntouch {tmp_path / 'second-ran'}"
    result = run_entrykit(["run", "--", "touch", str(tmp_path / "app-ran")], env)
    assert result.returncode == 50, result.stderr
    failure = [line for line in result.stderr.splitlines() if "(exit 50)" in line]
    assert failure and expected in failure[0] and line.split()[0] in failure[0], result.stderr
    assert not (tmp_path / "second-ran").exists()  # the next command did not run
    assert not (tmp_path / "app-ran").exists()  # nor the exec


def test_a_command_not_found_fails_before_the_first_step(
    env: dict[str, str], tmp_path: Path
) -> None:
    """Like a typo in CMD, one in a start-up command costs no wait and no migration."""
    listener = socket.create_server(("127.0.0.1", 0))  # accepts, never a database
    port = listener.getsockname()[1]
    listener.close()
    env.update(
        ENTRYKIT_PRESTART=f"touch {tmp_path / 'first-ran'}\nno-such-program-xyz --flag",
        DATABASE_URL=f"postgresql://u:secret-pw@127.0.0.1:{port}/db",
        ENTRYKIT_WAIT_TIMEOUT="30",
    )
    started = time.monotonic()
    result = run_entrykit(["run", "--", "true"], env)
    assert result.returncode == 50, result.stderr
    assert time.monotonic() - started < 10  # not after a 30 s wait for the database
    assert "no-such-program-xyz --flag: not found (exit 50)" in result.stderr
    assert not any(step_of(line) == "wait" for line in result.stderr.splitlines())
    assert not (tmp_path / "first-ran").exists()  # not even the commands before it ran
    assert "secret-pw" not in result.stderr


def test_a_script_with_a_bad_interpreter_fails_before_the_migrations(
    env: dict[str, str], tmp_path: Path
) -> None:
    """It passed the look-up (the file exists) and failed only after the migrate command:
    the check reads its #! line, and names the script and the interpreter."""
    script = tmp_path / "x.sh"
    script.write_text("#!/nonexistent/interp\necho hi\n")
    script.chmod(0o755)
    migrated = tmp_path / "migrated"
    env.update(
        ENTRYKIT_PRESTART=str(script),
        DATABASE_URL=f"sqlite:///{tmp_path}/app.db",
        ENTRYKIT_MIGRATE="1",
        ENTRYKIT_MIGRATE_COMMAND=f"touch {migrated}",
    )
    result = run_entrykit(["run", "--", "true"], env, cwd=tmp_path)
    assert result.returncode == 50, result.stderr
    assert f"command x.sh ({script}): bad interpreter /nonexistent/interp (exit 50)" in (
        result.stderr
    )
    assert not migrated.exists()
    # the migrate command itself: exit 30 at once, as for a typo
    env.update(ENTRYKIT_PRESTART="", ENTRYKIT_MIGRATE_COMMAND=str(script))
    result = run_entrykit(["run", "--", "true"], env, cwd=tmp_path)
    assert result.returncode == 30, result.stderr
    assert "bad interpreter /nonexistent/interp" in result.stderr


def test_a_command_that_is_not_executable_is_exit_50(env: dict[str, str], tmp_path: Path) -> None:
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    env["ENTRYKIT_PRESTART"] = str(script)
    result = run_entrykit(["run"], env)
    assert result.returncode == 50, result.stderr
    assert "not executable" in result.stderr and "script.sh" in result.stderr


def test_a_command_past_its_timeout_is_killed_with_its_group(
    env: dict[str, str], tmp_path: Path
) -> None:
    pidfile = tmp_path / "grandchild.pid"
    (tmp_path / "entrykit.toml").write_text(
        "[[commands]]\n"
        'name = "slow"\n'
        f'run = ["sh", "-c", "sleep 300 & echo $! > {pidfile}; wait"]\n'
        "timeout = 1\n"
    )
    started = time.monotonic()
    result = run_entrykit(["run"], env, cwd=tmp_path)
    assert result.returncode == 50, result.stderr
    assert time.monotonic() - started < 10
    assert "slow" in result.stderr and "timed out after 1 s" in result.stderr
    assert gone(int(pidfile.read_text()))


def test_processes_left_behind_by_a_command_are_killed(env: dict[str, str], tmp_path: Path) -> None:
    pidfile = tmp_path / "background.pid"
    env["ENTRYKIT_PRESTART"] = f"sh -c 'sleep 300 & echo $! > {pidfile}'"
    result = run_entrykit(["run"], env)
    assert result.returncode == 0, result.stderr
    assert gone(int(pidfile.read_text()))


# -- signals ---------------------------------------------------------------------------------


def start(args: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*ENTRYKIT, *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_sigterm_goes_to_the_command_group_and_entrykit_exits_143(
    env: dict[str, str], tmp_path: Path
) -> None:
    """The command traps SIGTERM and says so; its grandchild gets it too; entrykit exits 143
    as soon as they are gone, and the service command never starts."""
    pidfile = tmp_path / "grandchild.pid"
    env["ENTRYKIT_PRESTART"] = (
        f"sh -c 'sleep 300 & echo $! > {pidfile}; trap \"echo got TERM; exit 0\" TERM; wait'"
    )
    process = start(["run", "--", "touch", str(tmp_path / "app-ran")], env)
    grandchild = int(wait_for_file(pidfile))
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 143, stderr
    assert time.monotonic() - sent < 5
    assert "sh | got TERM" in prestart_lines(stderr)
    assert gone(grandchild)
    assert not (tmp_path / "app-ran").exists()


@pytest.mark.slow
def test_a_command_ignoring_sigterm_is_killed_after_10_seconds(
    env: dict[str, str], tmp_path: Path
) -> None:
    pidfile = tmp_path / "stubborn.pid"
    env["ENTRYKIT_PRESTART"] = f"sh -c 'trap \"\" INT TERM; echo $$ > {pidfile}; sleep 300'"
    process = start(["run"], env)
    stubborn = int(wait_for_file(pidfile))
    sent = time.monotonic()
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    took = time.monotonic() - sent
    assert process.returncode == 130, stderr
    assert 9.5 < took < 14, took
    assert "killing it after 10 s" in stderr
    assert gone(stubborn)


def test_kill_after_is_a_parameter_of_the_run(tmp_path: Path) -> None:
    """In-process: a stop signal during a command that ignores it ends in Stopped (143) after
    ``kill_after`` seconds, the command killed."""
    pidfile = tmp_path / "stubborn.pid"
    spec = CommandSpec("stubborn", ("sh", "-c", f"trap '' TERM; echo $$ > {pidfile}; sleep 300"))
    settings = Settings.load(
        {"prestart": (spec,), "secrets_dir": str(tmp_path)}, dict(os.environ), tmp_path
    )

    def stop_when_started() -> None:
        wait_for_file(pidfile)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=stop_when_started, daemon=True).start()
    started = time.monotonic()
    with pytest.raises(Stopped) as caught:
        run_pipeline(settings, kill_after=0.5)
    assert caught.value.exit_code == 143
    assert time.monotonic() - started < 8
    assert gone(int(pidfile.read_text()))


@pytest.mark.skipif(shutil.which("unshare") is None or os.geteuid() != 0, reason="needs root")
def test_no_process_left_behind_as_pid_1(env: dict[str, str], tmp_path: Path) -> None:
    """As PID 1 of a PID namespace, orphans become entrykit's: a command whose background
    child outlives it, and one that double-forks, leave nothing running or unreaped when the
    service command starts (it lists the namespace's processes)."""
    env["ENTRYKIT_PRESTART"] = (
        "sh -c 'sleep 300 & exit 0'\n"
        "sh -c '(sleep 301 &) ; exit 0'\n"
        "sh -c '(sh -c \"exit 0\" &) ; sleep 0.2'\n"
    )
    lister = (
        "import os\n"
        "for pid in sorted(int(p) for p in os.listdir('/proc') if p.isdigit()):\n"
        "    stat = open(f'/proc/{pid}/stat').read()\n"
        "    print(pid, stat.rsplit(')', 1)[1].split()[0], stat.split('(', 1)[1].split(')')[0])\n"
    )
    result = run_entrykit(
        ["run", "--", sys.executable, "-c", lister],
        env,
        prefix=["unshare", "--pid", "--fork", "--mount-proc"],
    )
    assert result.returncode == 0, result.stderr
    processes = [line.split() for line in result.stdout.splitlines()]
    assert [pid for pid, _, _ in processes] == ["1"], result.stdout  # only the exec'd command


@pytest.mark.skipif(shutil.which("unshare") is None or os.geteuid() != 0, reason="needs root")
def test_as_pid_1_orphans_are_reaped_while_the_command_still_runs(env: dict[str, str]) -> None:
    """A long migration or once Job as PID 1 must not pile up zombies until it ends: the
    command counts the zombies in its namespace after its orphans exited."""
    counter = (
        "for i in 1 2 3 4 5; do (sleep 0.05 &); done; sleep 1.5; "
        "echo zombies: $(ps -eo stat= | grep -c '^Z')"
    )
    env["ENTRYKIT_PRESTART"] = f"sh -c {shlex.quote(counter)}"
    result = run_entrykit(
        ["run"], env, prefix=["unshare", "--pid", "--fork", "--mount-proc"], timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "sh | zombies: 0" in result.stderr, result.stderr


@pytest.mark.skipif(shutil.which("unshare") is None or os.geteuid() != 0, reason="needs root")
def test_sigterm_as_pid_1_during_a_command(env: dict[str, str], tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    env["ENTRYKIT_PRESTART"] = f"sh -c 'echo $$ > {pidfile}; sleep 300 & wait'"
    process = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount-proc", *ENTRYKIT, "run"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_file(pidfile)
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
    pid_one = int(children[0])
    sent = time.monotonic()
    os.kill(pid_one, signal.SIGTERM)
    assert process.wait(timeout=15) == 143
    assert time.monotonic() - sent < 5
    assert process.stderr is not None
    assert "passing SIGTERM on" in process.stderr.read()


def test_a_second_stop_signal_kills_at_once(env: dict[str, str], tmp_path: Path) -> None:
    """Ctrl-C twice: the wait for a command that ignores the first signal is cut short."""
    pidfile = tmp_path / "stubborn.pid"
    env["ENTRYKIT_PRESTART"] = f"sh -c 'trap \"\" INT TERM; echo $$ > {pidfile}; sleep 300'"
    process = start(["run"], env)
    stubborn = int(wait_for_file(pidfile))
    process.send_signal(signal.SIGINT)
    time.sleep(0.5)
    sent = time.monotonic()
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130, stderr
    assert time.monotonic() - sent < 3
    assert gone(stubborn)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching user needs root")
def test_commands_run_before_the_user_switch_and_chown_hands_over_their_files(
    env: dict[str, str], tmp_path: Path
) -> None:
    """As the migrations do: the commands run as root, then ENTRYKIT_CHOWN gives what they
    wrote to ENTRYKIT_USER, who runs the service."""
    static = tmp_path / "static"
    static.mkdir()
    env |= {
        "ENTRYKIT_USER": "nobody",
        "ENTRYKIT_CHOWN": str(static),
        "ENTRYKIT_PRESTART": f"sh -c 'id -u; touch {static}/app.css'",
    }
    result = run_entrykit(["run", "--", "id", "-u"], env)
    assert result.returncode == 0, result.stderr
    nobody = pwd.getpwnam("nobody").pw_uid
    assert "sh | 0" in prestart_lines(result.stderr)
    assert result.stdout == f"{nobody}\n"
    assert (static / "app.css").stat().st_uid == nobody
