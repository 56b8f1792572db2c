"""Data-parallel training through torchrun: two CPU processes (gloo) reach what one reaches,
and only the first writes the run directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from digitlab.engine.distributed import Dist, shard
from digitlab.engine.rundir import read_metrics
from digitlab.engine.trainer import steps_per_epoch

pytestmark = pytest.mark.slow

FLAGS = ["--preset", "fast", "--limit-train", "5000", "--epochs", "2", "--batch-size", "128",
         "--device", "cpu", "--seed", "1", "--quiet"]


def _torchrun() -> list[str]:
    found = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    return [found] if found else [sys.executable, "-m", "torch.distributed.run"]


def test_two_processes_reach_the_accuracy_of_one(tmp_path, mnist_root):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run(
        [sys.executable, "-m", "digitlab", "train", *FLAGS, "--out", str(tmp_path / "one"),
         "--root", str(mnist_root)], capture_output=True, text=True, env=env, timeout=600)
    assert single.returncode == 0, single.stderr
    multi = subprocess.run(
        [*_torchrun(), "--standalone", "--nproc-per-node", "2", "-m", "digitlab",
         "train", *FLAGS, "--out", str(tmp_path / "two"), "--root", str(mnist_root)],
        capture_output=True, text=True, env=env, timeout=600)
    assert multi.returncode == 0, multi.stderr[-3000:]

    one, two = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    assert [r["epoch"] for r in two] == [1, 2]
    assert two[-1]["test_accuracy"] > 0.95
    assert abs(two[-1]["test_accuracy"] - one[-1]["test_accuracy"]) < 0.01
    # one result line on stdout, from the first process only
    assert multi.stdout.count("Test result:") == 1
    saved = json.loads((tmp_path / "two" / "config.json").read_text())
    assert saved["processes"] == 2
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [
        "checkpoint.prev.pt", "checkpoint.pt", "config.json", "metrics.jsonl",
        "model.safetensors"]


def test_each_rank_gets_its_share_of_every_global_batch():
    batch = torch.arange(10)
    parts = [shard(batch, Dist(rank=r, world=3)) for r in range(3)]
    assert sorted(torch.cat(parts).tolist()) == list(range(10))
    assert [len(p) for p in parts] == [4, 3, 3]
    assert torch.equal(shard(batch, Dist()), batch)
    # a last global batch smaller than the number of processes is dropped, not split to nothing
    assert steps_per_epoch(1001, 100, Dist(rank=0, world=2)) == 10
    assert steps_per_epoch(1002, 100, Dist(rank=0, world=2)) == 11
    assert steps_per_epoch(1001, 100, Dist()) == 11
