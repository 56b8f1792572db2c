"""The preprocessing benchmark itself, small: `benchmarks/preprocess_speed.py` times the
compiled path and the Python steps on drawn MNIST digits and checks their outputs agree
(the same verdict; the compiled path's from 8-bit pixels the same as from floats).
Speed is the benchmark's to print, never a test's to time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require_native

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "preprocess_speed.py"


@pytest.mark.slow
def test_benchmark_runs_and_both_paths_agree(mnist_root: Path) -> None:
    require_native()
    done = subprocess.run([sys.executable, str(SCRIPT), "--count", "40", "--repeats", "1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    for line in ("to_mnist, Python steps", "to_mnist, compiled", "to_mnist, compiled, 8-bit",
                 "PNG decode, Pillow", "PNG decode, vision/png.py",
                 "the same verdict for 40/40", "the same as from floats for 40/40"):
        assert line in done.stdout, done.stdout
