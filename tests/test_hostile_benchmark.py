"""benchmarks/hostile.py on a tiny budget: small canvases, few drawings, its JSON checked."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import processes

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "hostile.py"


@pytest.mark.slow
def test_the_hostile_benchmark_reports_each_input_and_stops_its_server(tmp_path):
    out = tmp_path / "hostile.json"
    run = subprocess.run([sys.executable, str(SCRIPT), "--side", "300", "--drawings", "5",
                          "--copies", "2", "--max-seconds", "240", "--json", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    figures = json.loads(out.read_text())
    assert set(figures["inputs"]) == {"gif_big_screen", "png_rgba_zeros", "png_palette",
                                      "jpeg_white", "bmp_rle8", "gif_big_screen x2"}
    for name, f in figures["inputs"].items():
        assert len(f["statuses"]) == f["copies"] and all(s in (200, 413, 422)
                                                         for s in f["statuses"]), (name, f)
        assert f["cpu_s"] >= 0 and f["wall_s"] > 0 and f["rss_before_mb"] > 50, (name, f)
        assert f["drawings"] == 5 and f["drawing_p99_ms"] > 0, (name, f)
        assert name.split()[0] in run.stdout
    facts = figures["machine"]
    assert facts["torch"] and facts["cpu"] and len(facts["commit"]) == 40 and facts["date"]
    assert isinstance(facts["avx2"], bool) and isinstance(facts["avx512"], bool)
    pid = int(re.search(r"digitlab serve \(pid (\d+)\)", run.stdout).group(1))
    assert pid not in [p[0] for p in processes()]  # the server it started is stopped


@pytest.mark.slow
def test_an_unknown_input_is_one_line(tmp_path):
    run = subprocess.run([sys.executable, str(SCRIPT), "--inputs", "nope"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "unknown input 'nope'" in run.stderr
    assert "Traceback" not in run.stderr
