"""The load benchmark itself, small: `benchmarks/serve_load.py` starts `digitlab serve`, sends
a bounded number of real drawn digits from 32 clients (as the drawing page sends them, asking for
the model's input back), stops by itself and reports figures.
Only what must hold on any machine is asserted (no errors, right answers, bounded memory);
speed is the benchmark's to print, never a test's to time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "serve_load.py"


@pytest.mark.slow
def test_bounded_load_has_no_errors_and_no_memory_growth(mnist_root: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--requests", "400", "--concurrency", "32",
         "--warmup", "50", "--max-seconds", "120", "--style", "page", "--json"],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    text, figures = done.stdout.rsplit("\n", 2)[0], json.loads(done.stdout.splitlines()[-1])
    assert figures["requests"] == 400 and not figures["timed_out"]
    assert figures["errors"] == 0, figures["error_kinds"]
    assert figures["right"] >= 390  # the shipped model on real MNIST test digits
    assert figures["p50_ms"] <= figures["p99_ms"] <= figures["max_ms"]
    # Every process of the server is counted: CPU spent and memory held.
    assert figures["server_cpu_ms_per_request"] > 0
    before, after = figures["rss_before_mib"]["rss"], figures["rss_after_mib"]["rss"]
    assert before > 100 and after - before < 50
    for line in ("throughput", "latency", "errors", "answers", "server CPU", "client CPU",
                 "memory"):
        assert f"\n{line}" in "\n" + text
