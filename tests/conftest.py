"""Shared fixtures. Real MNIST comes from the user cache (`make test` fetches it first)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from digitlab.data import sources
from digitlab.data.loader import DeviceData, load_split
from digitlab.vision import native


def processes() -> list[tuple[int, int, str]]:
    """(pid, parent pid, command line) of every process, read with `ps -ww`: without a
    terminal ps cuts each line at 80 columns, which hides most of a command line."""
    ps = subprocess.run(["ps", "-ww", "-eo", "pid=,ppid=,args="], capture_output=True,
                        text=True, check=True)
    return [(int(pid), int(ppid), args) for pid, ppid, args in
            (line.split(None, 2) for line in ps.stdout.splitlines())]


@contextlib.contextmanager
def script(*args: str) -> Iterator[subprocess.Popen[str]]:
    """A Python script running with its output piped; if the test fails midway, it is
    stopped as a user would stop it (Ctrl+C) rather than left behind."""
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=90)


def without_real_time() -> list[str]:
    """A command prefix that runs a program without the right to a real-time priority, as
    the current user (who can read this checkout wherever it was cloned): root drops
    CAP_SYS_NICE for it, and its RLIMIT_RTPRIO is 0 (which is all a normal user has)."""
    drop_cap = ["setpriv", "--inh-caps=-sys_nice", "--bounding-set=-sys_nice"]
    return [*(drop_cap if os.geteuid() == 0 else []), "prlimit", "--rtprio=0", "--"]


def require_native() -> None:
    """Skip where vision/_flat.c could not be built (no C compiler at install time); under
    CI or DIGITLAB_REQUIRE_NATIVE=1 (what .ci/run sets) that is a failure instead."""
    if native.flat is not None:
        return
    if os.environ.get("CI") or os.environ.get("DIGITLAB_REQUIRE_NATIVE"):
        pytest.fail("vision/_flat.c was not built (pip install -e . needs a C compiler)")
    pytest.skip("vision/_flat.c is not built here (no C compiler at install time)")


MNIST_FIXTURES = {"mnist_root", "mnist_test_split", "mnist_train_split"}


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that takes real MNIST, directly or through another fixture, is slow: it needs
    the data set (a download on a fresh machine), so it is never part of an offline run."""
    for item in items:
        if MNIST_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    """The verified real MNIST files (fetched through the normal chain if missing)."""
    root = sources.default_root()
    sources.fetch("mnist", root=root)
    return root


@pytest.fixture(scope="session")
def mnist_test_split(mnist_root: Path):
    return load_split("mnist", mnist_root, "test")


@pytest.fixture(scope="session")
def mnist_train_split(mnist_root: Path):
    return load_split("mnist", mnist_root, "train")


@pytest.fixture()
def tiny_data() -> DeviceData:
    """256 synthetic 28x28 images of 10 classes, for fast unit tests."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(256, 28, 28), dtype=np.uint8)
    labels = (np.arange(256) % 10).astype(np.uint8)
    import torch

    from digitlab.data.loader import Split

    return DeviceData.from_split(Split(images, labels), torch.device("cpu"), "unit")
