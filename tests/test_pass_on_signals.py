"""SIGHUP, SIGUSR1, SIGUSR2, SIGALRM and every other signal that would end entrykit during the
steps: passed on to the running start-up command, as tini passes them to its child; with no
command running, ignored, as PID 1 ignores them. Their default action would kill entrykit and
leave its command running in a session of its own."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from entrykit_process import clean_env
from test_once import start  # entrykit with its output captured

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
    process = start(["run", "--", "touch", str(app)], env)
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
    process = start(["run", "--", "touch", str(app)], env)
    time.sleep(1.0)  # into the wait (start-up takes a fraction of that)
    for signum in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        os.kill(process.pid, signum)
    time.sleep(0.3)
    late.touch()
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert app.exists()


NEW_SIGNALS = (
    signal.SIGALRM,
    signal.SIGVTALRM,
    signal.SIGPROF,
    signal.SIGPWR,
    signal.SIGXCPU,
    signal.SIGIO,
    signal.SIGRTMIN,
    signal.SIGRTMAX,
)

CATCH_ANY = """
import signal, sys, time
from pathlib import Path
wanted = [int(n) for n in sys.argv[3:]]
got = []
def note(signum, frame):
    got.append(signum)
    Path(sys.argv[1]).write_text(" ".join(map(str, got)))
for signum in wanted:
    signal.signal(signum, note)
Path(sys.argv[2]).touch()
deadline = time.monotonic() + 20
while len(got) < len(wanted) and time.monotonic() < deadline:
    time.sleep(0.02)
"""


def test_every_signal_that_would_end_entrykit_reaches_the_command(tmp_path: Path) -> None:
    """SIGALRM, SIGVTALRM, SIGPROF, SIGPWR, SIGXCPU, SIGIO and the real-time signals killed
    entrykit without a word (exit 142 for SIGALRM) and left its command running."""
    (tmp_path / "secrets").mkdir()
    script = tmp_path / "catch.py"
    script.write_text(CATCH_ANY)
    log, ready, app = tmp_path / "got", tmp_path / "ready", tmp_path / "app-ran"
    numbers = " ".join(str(int(signum)) for signum in NEW_SIGNALS)
    env = clean_env(
        tmp_path / "secrets", ENTRYKIT_PRESTART=f"{sys.executable} {script} {log} {ready} {numbers}"
    )
    process = start(["run", "--", "touch", str(app)], env)
    _wait_for(ready)
    for signum in NEW_SIGNALS:
        os.kill(process.pid, signum)
        time.sleep(0.1)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert log.read_text().split() == [str(int(signum)) for signum in NEW_SIGNALS]
    assert app.exists()


def test_sigalrm_with_no_command_running_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    app, late = tmp_path / "app-ran", tmp_path / "late"
    env = clean_env(tmp_path / "secrets", ENTRYKIT_WAIT_FOR=f"file://{late}")
    process = start(["run", "--", "touch", str(app)], env)
    time.sleep(1.0)  # into the wait
    for signum in NEW_SIGNALS:
        os.kill(process.pid, signum)
    time.sleep(0.3)
    late.touch()
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert app.exists()


def test_sigalrm_reaches_an_entrykit_once_command(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    script = tmp_path / "catch.py"
    script.write_text(CATCH_ANY)
    log, ready = tmp_path / "got", tmp_path / "ready"
    env = clean_env(tmp_path / "secrets", DATABASE_URL=f"sqlite:///{tmp_path}/app.db")
    catcher = [sys.executable, str(script), str(log), str(ready), str(int(signal.SIGALRM))]
    process = start(["once", "job", "--", *catcher], env)
    _wait_for(ready)
    os.kill(process.pid, signal.SIGALRM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert log.read_text() == str(int(signal.SIGALRM))
