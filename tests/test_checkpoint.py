"""Checkpoint files: atomic replacement, weights_only loading, corruption found and survived."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from digitlab.engine import checkpoint
from digitlab.errors import RunDirError


def _payload(value: float) -> dict:
    return {"model": {"w": torch.full((3, 4), value)}, "steps": int(value),
            "optimizer": {"state": {0: {"step": torch.tensor(2.0)}}, "param_groups": [
                {"lr": 0.1, "betas": (0.9, 0.99), "params": [0]}]},
            "metrics": [{"epoch": 1, "test_accuracy": 0.9}], "order": None}


def test_save_keeps_the_previous_and_loads_weights_only(tmp_path, monkeypatch):
    checkpoint.save(tmp_path, _payload(1.0))
    checkpoint.save(tmp_path, _payload(2.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.prev.pt", "checkpoint.pt"]
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    body, path = checkpoint.load(tmp_path)
    assert path.name == "checkpoint.pt" and calls == [True]
    assert body["steps"] == 2 and torch.equal(body["model"]["w"], torch.full((3, 4), 2.0))
    assert body["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.99)
    assert checkpoint.read(tmp_path / "checkpoint.prev.pt")["steps"] == 1


@pytest.mark.parametrize("damage", ["truncate", "garbage", "flip", "empty"])
def test_a_damaged_checkpoint_is_reported_and_the_previous_one_used(tmp_path, damage):
    checkpoint.save(tmp_path, _payload(1.0))
    checkpoint.save(tmp_path, _payload(2.0))
    path = tmp_path / "checkpoint.pt"
    blob = bytearray(path.read_bytes())
    if damage == "truncate":
        blob = blob[: len(blob) // 2]
    elif damage == "garbage":
        blob = bytearray(b"not a checkpoint at all" * 10)
    elif damage == "flip":
        # a byte inside the stored tensor data: the file still loads, the checksum does not match
        offset = blob.find(np.full(12, 2.0, dtype=np.float32).tobytes())
        assert offset > 0
        blob[offset + 5] ^= 0x40
    else:
        blob = bytearray()
    path.write_bytes(bytes(blob))
    notes = []
    body, used = checkpoint.load(tmp_path, report=notes.append)
    assert used.name == "checkpoint.prev.pt" and body["steps"] == 1
    assert len(notes) == 1 and "checkpoint.pt is corrupt" in notes[0]
    assert "resuming from" in notes[0] and "checkpoint.prev.pt" in notes[0]


def test_no_good_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(RunDirError, match="has no checkpoint to resume from"):
        checkpoint.load(tmp_path)
    with pytest.raises(RunDirError, match="no such run directory"):
        checkpoint.load(tmp_path / "missing")
    (tmp_path / "checkpoint.pt").write_bytes(b"\x00" * 100)
    with pytest.raises(RunDirError, match="corrupt.*no good checkpoint is left"):
        checkpoint.load(tmp_path)


def test_pickled_objects_are_refused(tmp_path):
    from fractions import Fraction  # any class: unpickling it could run code

    torch.save({"format": checkpoint.FORMAT, "version": 1, "x": Fraction(1, 3)},
               tmp_path / "checkpoint.pt")
    with pytest.raises(RunDirError, match="corrupt or truncated.*Unsupported global"):
        checkpoint.read(tmp_path / "checkpoint.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(RunDirError, match="not a digitlab checkpoint"):
        checkpoint.read(tmp_path / "other.pt")


def test_random_states_round_trip_through_a_weights_only_file(tmp_path):
    perm = torch.Generator().manual_seed(3)
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(4)
    perm.manual_seed(5)
    torch.rand(3), random.random(), np.random.rand(), torch.randperm(5, generator=perm)
    checkpoint.save(tmp_path, {"rng": checkpoint.capture_rng({"permutation": perm})})
    expected = (random.random(), np.random.rand(), torch.rand(3),
                torch.randperm(9, generator=perm))
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    perm.manual_seed(99)
    body, _ = checkpoint.load(tmp_path)
    checkpoint.restore_rng(body["rng"], {"permutation": perm})
    got = (random.random(), np.random.rand(), torch.rand(3), torch.randperm(9, generator=perm))
    assert got[0] == expected[0] and got[1] == expected[1]
    assert torch.equal(got[2], expected[2]) and torch.equal(got[3], expected[3])


def test_a_crash_between_the_two_renames_leaves_the_previous_file(tmp_path, monkeypatch):
    checkpoint.save(tmp_path, _payload(1.0))
    real_replace = checkpoint.os.replace
    calls = []

    def crash_on_second(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed after checkpoint.pt became .prev, before the new
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(tmp_path, _payload(2.0))
    monkeypatch.undo()
    assert not list(tmp_path.glob(".*.tmp"))
    notes = []
    body, used = checkpoint.load(tmp_path, report=notes.append)
    assert used.name == "checkpoint.prev.pt" and body["steps"] == 1 and notes == []
