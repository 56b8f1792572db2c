"""The installed dependencies meet the floors pyproject.toml declares (the floors exclude
releases with known flaws on the paths that read untrusted input)."""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
PROJECT = tomllib.loads(PYPROJECT.read_text())["project"]
# The core install's and every extra's, but for the extras that name digitlab's own.
REQUIREMENTS = [Requirement(line) for line in [
    *PROJECT["dependencies"], *(r for extra in PROJECT["optional-dependencies"].values()
                                for r in extra)] if not line.startswith("digitlab")]


@pytest.mark.parametrize("requirement", [r for r in REQUIREMENTS
                                         if r.marker is None or r.marker.evaluate()],
                         ids=lambda r: r.name)
def test_installed_version_meets_the_floor(requirement: Requirement) -> None:
    installed = importlib.metadata.version(requirement.name)
    assert requirement.specifier.contains(installed, prereleases=True), (
        f"{requirement.name} {installed} does not satisfy {requirement}")


def test_floors_exclude_the_known_vulnerable_releases() -> None:
    floors = {r.name: r.specifier for r in REQUIREMENTS}
    assert not floors["torch"].contains("2.9.1")  # weights_only unpickler, fixed in 2.10
    assert not floors["pillow"].contains("10.2.0")  # fixed in 10.3
    assert not floors["python-multipart"].contains("0.0.26")  # fixed in 0.0.27
