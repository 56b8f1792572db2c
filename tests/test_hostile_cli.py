"""The costly images through `digitlab predict`: each costs the process no more CPU time or
memory than reading a drawing does, give or take the targets of tests/test_hostile.py."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import hostile_inputs as inputs  # noqa: E402

COST_S = 0.25
COST_MB = 100
SUFFIX = {"image/gif": ".gif", "image/png": ".png", "image/jpeg": ".jpg", "image/bmp": ".bmp"}


def predict(path: Path, limit_s: float = 300) -> tuple[int, str, float, float]:
    """`digitlab predict path`: exit code, output, CPU seconds and peak RSS in MB of that
    process alone (os.wait4's resource usage)."""
    with open(path.with_suffix(".out"), "w+") as out:
        proc = subprocess.Popen([sys.executable, "-m", "digitlab", "predict", str(path)],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        killer = threading.Timer(limit_s, proc.kill)
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    return proc.returncode, text, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1000


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> tuple[float, float]:
    """The dearer of two runs on a drawing: start-up (imports, the model) is the bulk."""
    path = tmp_path_factory.mktemp("cli") / "drawing.png"
    path.write_bytes(inputs.drawing())
    runs = [predict(path) for _ in range(2)]
    assert all(code == 0 and "7" in text for code, text, _, _ in runs), runs
    return max(r[2] for r in runs), max(r[3] for r in runs)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(inputs.COSTLY))
def test_a_costly_image_costs_predict_little(tmp_path, baseline, name):
    body, content_type = inputs.costly(name)
    path = tmp_path / f"{name}{SUFFIX[content_type]}"
    path.write_bytes(body)
    code, text, cpu_s, rss_mb = predict(path)
    assert code in (0, 1) and "Traceback" not in text, text
    if code == 1:
        assert len(text.strip().splitlines()) == 1 and path.name in text, text
    assert cpu_s - baseline[0] <= COST_S, (cpu_s, baseline)
    assert rss_mb - baseline[1] <= COST_MB, (rss_mb, baseline)
