"""SIGHUP, SIGUSR1 and SIGUSR2 during the steps: passed on to the running start-up command, as
tini passes them to its child; with no command running, ignored, as PID 1 ignores them. Their
default action would kill entrykit and leave its command running in a session of its own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from entrykit_process import ENTRYKIT, clean_env

CATCHER = """
import signal, sys, time
from pathlib import Path
log = Path(sys.argv[1])
got = []
def note(signum, frame):
    got.append(signal.Signals(signum).name)
    log.write_text(" ".join(got))
for signum in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
    signal.signal(signum, note)
Path(sys.argv[2]).touch()
deadline = time.monotonic() + 20
while len(got) < 3 and time.monotonic() < deadline:
    time.sleep(0.02)
print("caught", " ".join(got), flush=True)
"""


def _wait_for(path: Path, within: float = 15) -> None:
    deadline = time.monotonic() + within
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_signals_reach_the_running_command_and_entrykit_goes_on(tmp_path: Path) -> None:
    script = tmp_path / "catch.py"
    script.write_text(CATCHER)
    log, ready, app = tmp_path / "got", tmp_path / "ready", tmp_path / "app-ran"
    env = clean_env(
        tmp_path / "secrets",
        ENTRYKIT_PRESTART=f"{sys.executable} {script} {log} {ready}",
    )
    (tmp_path / "secrets").mkdir()
    process = subprocess.Popen(
        [*ENTRYKIT, "run", "--", "touch", str(app)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for(ready)
    for signum in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        os.kill(process.pid, signum)
        time.sleep(0.2)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert log.read_text() == "SIGHUP SIGUSR1 SIGUSR2"
    assert "caught SIGHUP SIGUSR1 SIGUSR2" in stderr
    assert app.exists()  # the steps went on to the service


def test_with_no_command_running_they_are_ignored(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    app = tmp_path / "app-ran"
    # a wait that needs a second: the signals arrive while nothing but entrykit runs
    late = tmp_path / "late"
    env = clean_env(tmp_path / "secrets", ENTRYKIT_WAIT_FOR=f"file://{late}")
    process = subprocess.Popen(
        [*ENTRYKIT, "run", "--", "touch", str(app)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.0)  # into the wait (start-up takes a fraction of that)
    for signum in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        os.kill(process.pid, signum)
    time.sleep(0.3)
    late.touch()
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert app.exists()
