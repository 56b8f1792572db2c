"""The one atomic-write helper: umask-respecting modes for every writer, and no half files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from digitlab.files import atomic_output, atomic_write

UMASK = 0o027  # not the usual 0o022, so a hard-coded mode cannot pass by chance


@pytest.fixture()
def umask():
    old = os.umask(UMASK)
    try:
        yield 0o666 & ~UMASK
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_atomic_write_creates_files_as_open_does_and_keeps_a_replaced_files_mode(tmp_path,
                                                                                  umask):
    fresh = tmp_path / "sub" / "a.bin"
    atomic_write(fresh, b"one")
    assert fresh.read_bytes() == b"one" and _mode(fresh) == umask
    fresh.chmod(0o600)
    atomic_write(fresh, b"two")
    assert fresh.read_bytes() == b"two" and _mode(fresh) == 0o600
    assert sorted(p.name for p in fresh.parent.iterdir()) == ["a.bin"]  # no temp left


def test_data_files_get_the_umask_mode(tmp_path, umask):
    from digitlab.data.idx import read_idx, write_idx_gz

    path = tmp_path / "labels-idx1-ubyte.gz"
    write_idx_gz(path, np.arange(10, dtype=np.uint8))
    assert _mode(path) == umask and read_idx(path).tolist() == list(range(10))


def test_checkpoints_get_the_umask_mode(tmp_path, umask):
    import torch

    from digitlab.engine import checkpoint

    for step in (1, 2):  # the second save moves the first to checkpoint.prev.pt
        checkpoint.save(tmp_path, {"steps": step, "weights": torch.ones(3)})
    assert _mode(tmp_path / checkpoint.CHECKPOINT) == umask
    assert _mode(tmp_path / checkpoint.PREVIOUS) == umask
    assert checkpoint.load(tmp_path)[0]["steps"] == 2


@pytest.mark.slow
def test_exported_files_get_the_umask_mode(tmp_path, mnist_root, umask):
    from digitlab.export import export_module
    from digitlab.models.registry import create_model, model_args

    args = model_args("mlp", hidden=[16])
    meta = {"model": "mlp", "model_args": args, "normalize": "standard", "dataset": "mnist",
            "classes": [str(i) for i in range(10)], "digitlab_version": "test"}
    out = tmp_path / "m.onnx"
    export_module(create_model("mlp", **args), meta, fmt="onnx", out=out, root=mnist_root,
                  exporter="torchscript", check_count=20)
    assert _mode(out) == umask
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_an_error_inside_the_block_leaves_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_output(path) as fh:
        fh.write(b"new, half written")
        raise RuntimeError("check failed")
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f"]


def test_a_process_killed_mid_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"old")
    writer = (
        "import sys\nfrom pathlib import Path\nfrom digitlab.files import atomic_output\n"
        "with atomic_output(Path(sys.argv[1])) as fh:\n"
        "    fh.write(b'x' * 4096); fh.flush()\n"
        "    print('writing', flush=True)\n"
        "    sys.stdin.read()\n"  # holds the file half written until it is killed
    )
    proc = subprocess.Popen([sys.executable, "-c", writer, str(path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        temps = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        assert len(temps) == 1 and temps[0].stat().st_size == 4096
        proc.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert path.read_bytes() == b"old"
