"""Resume loses nothing: a run killed with SIGKILL at a random moment (twice) or stopped with
Ctrl-C, then resumed, ends with weights byte-identical to a run that was never stopped."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from digitlab.engine.rundir import read_metrics

pytestmark = pytest.mark.slow

# Everything that draws random numbers: shuffling, dropout (torch's global generator),
# augmentation with elastic distortion, the handwriting changes and the fused-pair outliers
# (a pool made from the seed, drawn per batch); plus an EMA, label smoothing, and a
# checkpoint every few batches. Small, so that six processes stay cheap.
CONFIG = """
preset = "fast"
model_args = { channels = [4, 8], hidden = 16, dropout = 0.2 }
epochs = 2
batch_size = 50
limit_train = 3000
eval_batch_size = 5000
checkpoint_every = 5
ema = 0.9
label_smoothing = 0.1
aug_rotate = 10.0
aug_translate = 2.0
aug_elastic = 1.0
handwriting_augment = true
outliers = 0.1
device = "cpu"
seed = 7
"""


def _train(*args: str, root: Path) -> subprocess.Popen:
    # One thread: two-thread OpenMP regions crawl when the suite shares two busy cores (and
    # both runs compared use the same setting, as exact resume requires).
    return subprocess.Popen([sys.executable, "-m", "digitlab", "train", *args, "--root",
                             str(root), "--quiet"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def _finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def _wait_for(condition, proc: subprocess.Popen, what: str, limit: float = 240) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert proc.poll() is None, f"training ended before {what}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"no {what} after {limit}s"
        time.sleep(0.005)


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return 0


@pytest.fixture(scope="module")
def reference(tmp_path_factory, mnist_root):
    """(config file, the uninterrupted run, its seconds of training after the first
    checkpoint)."""
    tmp = tmp_path_factory.mktemp("resume")
    config = tmp / "config.toml"
    config.write_text(CONFIG)
    ref = _train("--config", str(config), "--out", str(tmp / "ref"), root=mnist_root)
    _wait_for(lambda: (tmp / "ref" / "checkpoint.pt").exists(), ref, "first checkpoint")
    first_checkpoint = time.monotonic()
    rc, _, err = _finish(ref)
    assert rc == 0, err
    return config, tmp / "ref", time.monotonic() - first_checkpoint


def test_sigkill_at_random_moments_then_resume_is_bit_identical(tmp_path, mnist_root,
                                                                 reference):
    config, ref, training = reference
    assert training > 0.2, "the run is too short to be killed in the middle"
    rng = random.Random(time.time_ns())
    delays: list[float] = []
    run = tmp_path / "killed"
    ckpt = run / "checkpoint.pt"
    proc = _train("--config", str(config), "--out", str(run), root=mnist_root)
    kills, done = 0, False
    for scale in (0.6, 0.3):
        seen = _mtime(ckpt)
        while _mtime(ckpt) == seen and proc.poll() is None:
            time.sleep(0.005)
        delays.append(rng.uniform(0, scale * training))
        time.sleep(delays[-1])
        if proc.poll() is not None:  # finished (or found nothing left to do) by itself
            done = True
            break
        proc.send_signal(signal.SIGKILL)
        assert _finish(proc)[0] == -signal.SIGKILL
        kills += 1
        proc = _train("--resume", str(run), root=mnist_root)
    rc, _, err = _finish(proc)
    # A kill after the last checkpoint leaves nothing to do; resume says so.
    assert rc == 0 or (kills and "already finished its 2 epochs" in err), f"{delays}: {err}"
    assert kills >= 1 and (kills == 2 or done), f"delays {delays}"

    assert (run / "model.safetensors").read_bytes() == (ref / "model.safetensors").read_bytes(), \
        f"delays {delays}"
    got, want = read_metrics(run), read_metrics(ref)
    assert [r["epoch"] for r in got] == [1, 2]
    assert [(r["train_loss"], r["test_accuracy"]) for r in got] == \
        [(r["train_loss"], r["test_accuracy"]) for r in want]


def test_ctrl_c_checkpoints_and_exits_cleanly_and_resume_matches(tmp_path, mnist_root,
                                                                 reference):
    from digitlab.console import Console
    from digitlab.engine.train import resume
    from digitlab.errors import DigitlabError

    config, ref, _ = reference
    run = tmp_path / "stopped"
    proc = _train("--config", str(config), "--out", str(run), root=mnist_root)
    _wait_for(lambda: (run / "checkpoint.prev.pt").exists(), proc, "two checkpoints")
    proc.send_signal(signal.SIGINT)
    rc, out, err = _finish(proc)
    assert rc == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("interrupted: checkpoint saved at ")
    assert f"continue with: digitlab train --resume {run}" in err

    # A changed setting is refused, with the difference named.
    with pytest.raises(DigitlabError, match=r"settings differ from the run's: lr: 0.01 -> 0.5"
                                            r".*pass --force"):
        resume(run, flags={"lr": 0.5}, root=mnist_root, console=Console(quiet=True))

    # The newest checkpoint is damaged: the previous one is used, and nothing is lost.
    newest = run / "checkpoint.pt"
    newest.write_bytes(newest.read_bytes()[:5000])
    rc, out, err = _finish(_train("--resume", str(run), root=mnist_root))
    assert rc == 0, err
    assert "checkpoint.pt is corrupt or truncated" in err and "checkpoint.prev.pt" in err
    assert (run / "model.safetensors").read_bytes() == (ref / "model.safetensors").read_bytes()
    last = read_metrics(run)[-1]
    assert out.strip() == (f"Test result: Accuracy: {100 * last['test_accuracy']:.2f}%, "
                           f"Avg loss: {last['test_loss']:.6f}")


def test_resume_with_force_continues_under_new_settings(tmp_path, mnist_root):
    from digitlab.config import resolve
    from digitlab.console import Console
    from digitlab.engine.train import fit, resume
    from digitlab.errors import DigitlabError, RunDirError

    cfg = resolve(preset="fast", flags={"model_args": {"channels": [4, 8], "hidden": 16},
                                        "limit_train": 1000, "epochs": 1, "device": "cpu"})
    fit(cfg, out=tmp_path / "r", root=mnist_root, console=Console(quiet=True))
    with pytest.raises(DigitlabError, match="already finished its 1 epochs.*--force"):
        resume(tmp_path / "r", root=mnist_root, console=Console(quiet=True))
    more = resume(tmp_path / "r", flags={"epochs": 2}, force=True, root=mnist_root,
                  console=Console(quiet=True))
    assert [r["epoch"] for r in read_metrics(tmp_path / "r")] == [1, 2]
    assert [r["epoch"] for r in more.metrics] == [1, 2]
    saved = (tmp_path / "r" / "config.json").read_text()
    assert '"epochs": 2' in saved and '"resumed"' in saved
    os.remove(tmp_path / "r" / "checkpoint.pt")
    os.remove(tmp_path / "r" / "checkpoint.prev.pt")
    with pytest.raises(RunDirError, match="has no checkpoint to resume from"):
        resume(tmp_path / "r", root=mnist_root, console=Console(quiet=True))
