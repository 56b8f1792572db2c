"""benchmarks/serve_target.py, the README's three load commands round after round (and on
emulated slower machines): every run's figures and a table per share, and clear refusals.
Whether the target is met is the benchmark's to print, never a test's to time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import processes, script, without_real_time

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "serve_target.py"
CAN_BE_REAL_TIME = hasattr(os, "sched_setscheduler") and os.geteuid() == 0


def target(*args: str, real_time: bool = True) -> subprocess.CompletedProcess[str]:
    prefix = [] if real_time else without_real_time()
    return subprocess.run([*prefix, sys.executable, str(SCRIPT), *args], capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("shares", [
    pytest.param(["0"], id="this-machine"),
    pytest.param(["0", "0.2"], id="and-a-slower-one", marks=[
        pytest.mark.root,
        pytest.mark.skipif(not CAN_BE_REAL_TIME, reason="needs root for a real-time priority")]),
])
def test_every_run_is_reported_and_tabled_per_share(mnist_root: Path, tmp_path: Path,
                                                    shares: list[str]) -> None:
    out = tmp_path / "runs.json"
    done = target("--rounds", "1", "--shares", *shares, "--commands", "drawn", "page",
                  "--requests", "200", "--warmup", "20", "--json", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    runs = json.loads(out.read_text())
    assert [(r["share"], r["command"]) for r in runs] == [
        (float(s), c) for s in shares for c in ("drawn", "page")]
    for run in runs:
        assert run["requests"] == 200 and run["errors"] == 0 and run["right"] >= 195
        assert run["round"] == 1 and run["p99_ms"] > 0 and run["server_cpu_ms_per_request"] > 0
    # A line per run as it ends, then the table: one row per share, with its runs counted.
    lines = done.stdout.splitlines()
    assert sum(" requests/s  p99 " in line for line in lines) == len(runs)
    assert "| 0 | this one | " in done.stdout and " of 2 | " in done.stdout
    if "0.2" in shares:
        assert "| 0.2 | 1.25 times slower | " in done.stdout


@pytest.mark.parametrize("args, words", [
    (["--shares", "0", "0.95"], "each share must be 0 or between 0.05 and 0.9, got 0.95"),
    (["--rounds", "0"], "--rounds must be 1..100, got 0"),
    (["--requests", "10"], "--requests must be at least 100"),
])
def test_bad_settings_are_one_clear_error(args: list[str], words: str) -> None:
    done = target(*args)
    assert done.returncode == 2 and words in done.stderr and "Traceback" not in done.stderr


def test_a_share_without_the_right_to_take_it_is_refused_before_any_run() -> None:
    done = target("--shares", "0", "0.3", real_time=False)
    assert done.returncode == 2 and "need cpu_thief.py's real-time priority" in done.stderr
    assert done.stdout == ""  # nothing was run


def _left(marker: str) -> list[str]:
    return [args for _, _, args in processes() if marker in args]


@pytest.mark.slow
def test_ctrl_c_tables_the_runs_done_and_leaves_no_server(mnist_root: Path) -> None:
    """SIGINT to the script alone (as a supervisor would send it): the run under way stops
    its server, the finished runs are tabled, exit 130, no traceback, nothing left behind."""
    import signal
    import time

    with script(str(SCRIPT), "--rounds", "3", "--commands", "drawn", "--requests", "2000",
                "--warmup", "20") as proc:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # the first run, done
        assert " requests/s  p99 " in first, first
        time.sleep(1.5)  # the second run's server is starting or serving
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "stopped after 1 run(s)" in err and "Traceback" not in err
    assert "| 0 | this one | " in out and " of 1 | " in out
    deadline = time.monotonic() + 30
    while _left("benchmarks/serve_load.py") + _left("-m digitlab serve --port 0"):
        assert time.monotonic() < deadline, _left("digitlab")
        time.sleep(0.2)
