"""digitlab keeps to itself: onnxruntime's telemetry (1.29+ on every platform) is off."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

READ_A_DIGIT = """
import numpy as np
from digitlab.api import Recognizer
recognizer = Recognizer.load()
assert recognizer.info()["backend"] == "onnxruntime"
picture = np.zeros((28, 28), np.uint8)
picture[5:23, 12:15] = 255
for _ in range(20):
    recognizer.predict(picture)
import os
print(os.environ.get("ORT_DISABLE_TELEMETRY"))
"""


# onnxruntime turns its telemetry off by itself where one of these says it runs under CI
# (names from its library's strings; "CI" too, checked by hand). They are taken out of the
# child's environment so that both halves of the test mean the same on CI as anywhere else.
CI_MARKERS = {"CI", "TF_BUILD", "GITHUB_ACTIONS", "GITLAB_CI", "CIRCLECI", "TRAVIS",
              "JENKINS_URL", "CODEBUILD_BUILD_ID", "BUILDKITE", "TEAMCITY_VERSION", "APPVEYOR",
              "BITBUCKET_BUILD_NUMBER"}


def read_a_digit(home: Path, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items()
             if k != "ORT_DISABLE_TELEMETRY" and k not in CI_MARKERS}
    done = subprocess.run([sys.executable, "-c", READ_A_DIGIT], capture_output=True,
                          text=True, timeout=120,
                          env={**clean, "HOME": str(home), "XDG_CACHE_HOME": str(home / ".c"),
                               **env})
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


@pytest.mark.slow
def test_onnxruntime_telemetry_is_off_unless_the_user_turns_it_on(tmp_path: Path) -> None:
    quiet = tmp_path / "quiet"
    quiet.mkdir()
    assert read_a_digit(quiet) == "1"
    assert not list(quiet.rglob("*"))  # no device id, no event cache
    # The user's own choice stands (and onnxruntime then keeps its files, as it does
    # without digitlab).
    chosen = tmp_path / "chosen"
    chosen.mkdir()
    assert read_a_digit(chosen, ORT_DISABLE_TELEMETRY="0") == "0"
    assert [p.name for p in chosen.rglob("deviceid")] == ["deviceid"]
