"""benchmarks/cpu_thief.py, the emulated slower machine: it runs the command while taking
a share of every core, passes its exit code on, leaves no thief behind, and refuses clearly
what it cannot do. Shares are checked loosely: the tool's job is to slow things down, not
to time them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import without_real_time

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "cpu_thief.py"
CAN_BE_REAL_TIME = hasattr(os, "sched_setscheduler") and os.geteuid() == 0
# A busy loop that prints the share of its own wall time it ran for.
BUSY = ("import time\n"
        "t, c = time.perf_counter(), time.process_time()\n"
        "while time.perf_counter() - t < 0.6: pass\n"
        "print((time.process_time() - c) / (time.perf_counter() - t))\n")


def thief(*args: str, real_time: bool = True) -> subprocess.CompletedProcess[str]:
    prefix = [] if real_time else without_real_time()
    return subprocess.run([*prefix, sys.executable, str(SCRIPT), *args], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.root
@pytest.mark.skipif(not CAN_BE_REAL_TIME, reason="needs root for a real-time priority")
def test_the_command_runs_slower_and_its_exit_code_passes_on() -> None:
    done = thief("--share", "0.5", "--", sys.executable, "-c", BUSY)
    assert done.returncode == 0, done.stderr
    # The busy loop gets only what the thieves leave it (about half of a core).
    assert float(done.stdout) < 0.8
    assert "cpu_thief: took" in done.stderr and "of" in done.stderr
    assert thief("--share", "0.2", "--", sys.executable, "-c", "raise SystemExit(3)"
                 ).returncode == 3
    killed = "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"
    assert thief("--share", "0.2", "--", sys.executable, "-c", killed).returncode == 128 + 15
    # No thief is left behind: nothing runs at its priority any more.
    left = subprocess.run(["ps", "-ww", "-eo", "rtprio=,args="], capture_output=True, text=True)
    assert not [line for line in left.stdout.splitlines()
                if line.split()[0] == "10" and "cpu_thief" in line]


@pytest.mark.root
@pytest.mark.skipif(not CAN_BE_REAL_TIME, reason="needs root for a real-time priority")
def test_a_command_that_does_not_exist_is_127_and_said() -> None:
    done = thief("--share", "0.2", "--", "/nonexistent/command")
    assert done.returncode == 127
    assert "cannot run '/nonexistent/command'" in done.stderr


@pytest.mark.parametrize("args, words", [
    (["--share", "0.95"], "--share must be between 0.05 and 0.9, got 0.95"),
    (["--share", "0"], "--share must be between 0.05 and 0.9, got 0"),
    (["--period-us", "10"], "--period-us must be between 100 and 100000, got 10"),
    (["--seconds", "-1"], "--seconds must be above 0"),
])
def test_bad_settings_are_one_clear_error(args: list[str], words: str) -> None:
    done = thief(*args, "--", "true")
    assert done.returncode == 2 and words in done.stderr


def test_without_the_right_to_a_real_time_priority_it_says_so() -> None:
    done = thief("--", "true", real_time=False)
    assert done.returncode == 2
    assert "needs Linux and root or CAP_SYS_NICE" in done.stderr


# A command that says how many SIGINTs it got, once one has come (and a moment after).
COUNTS_INTS = ("import signal, sys, time\n"
               "got = []\n"
               "signal.signal(signal.SIGINT, lambda *_: got.append(1))\n"
               "print('ready', flush=True)\n"
               "while not got: time.sleep(0.01)\n"
               "time.sleep(0.5)\n"
               "open(sys.argv[1], 'w').write(str(len(got)))\n")


@pytest.mark.root
@pytest.mark.skipif(not CAN_BE_REAL_TIME, reason="needs root for a real-time priority")
@pytest.mark.parametrize("whole_group", [False, True])
def test_ctrl_c_lets_the_command_stop_cleanly(tmp_path: Path, whole_group: bool) -> None:
    """Ctrl+C from a terminal reaches the command too: it ends by itself, signalled once.
    A SIGINT to the thief alone is passed on to the command (a load test then stops its
    server), where it used to be killed outright."""
    import signal
    import time

    said = tmp_path / "ints"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--share", "0.1", "--",
                             sys.executable, "-c", COUNTS_INTS, str(said)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(0.2)
        if whole_group:
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert said.read_text() == "1"  # it had one SIGINT, and the time to act on it
