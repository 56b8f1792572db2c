"""Real training on a subset of real MNIST, the tutorial's log, and the run directory."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from digitlab.config import resolve
from digitlab.console import Console
from digitlab.engine.evaluate import evaluate_run
from digitlab.engine.rundir import METRICS, WEIGHTS, load_model, read_metrics
from digitlab.engine.train import fit

pytestmark = pytest.mark.slow


def test_short_real_training_run_learns(tmp_path, mnist_root):
    cfg = resolve(preset="default", flags={"epochs": 2, "limit_train": 12000})
    result = fit(cfg, out=tmp_path / "run", root=mnist_root, console=Console(quiet=True))
    assert result.final.accuracy >= 0.94
    assert result.final.count == 10000
    rows = read_metrics(result.run_dir)
    assert [r["epoch"] for r in rows] == [1, 2]
    for row in rows:
        assert {"epoch", "train_loss", "test_loss", "test_accuracy", "seconds",
                "images_per_second"} <= set(row)
        assert 0 < row["test_accuracy"] <= 1 and row["seconds"] > 0
        assert row["images_per_second"] == pytest.approx(12000 / row["seconds"])
    assert rows[1]["train_loss"] < rows[0]["train_loss"]

    saved = json.loads((result.run_dir / "config.json").read_text())
    assert saved["seed"] == 0 and saved["device_used"] == "cpu"
    assert saved["model_args"]["hidden"] == [512, 256] and "digitlab_version" in saved
    again = evaluate_run(result.run_dir, root=mnist_root, device="cpu")
    assert again.accuracy == result.final.accuracy


def test_tutorial_preset_prints_the_tutorials_log(tmp_path, mnist_root, capsys):
    cfg = resolve(preset="tutorial", flags={"epochs": 1, "limit_train": 25600})
    result = fit(cfg, out=tmp_path / "tut", root=mnist_root, console=Console())
    out = capsys.readouterr().out.splitlines()
    assert out[:4] == ["25600", "10000", "shape of x[N,C,H,W]:torch.Size([64, 1, 28, 28])",
                       "shape of y:torch.Size([64])torch.int64"]
    assert "Using cpu device" in out
    assert "  (hidden1): Linear(in_features=784, out_features=128, bias=True)" in out
    start = out.index("Epoch 1")
    assert out[start + 1] == "--------------------"
    loss_lines = out[start + 2 : start + 4]
    assert [re.fullmatch(r"loss:\d\.\d{6} \[number: (\d+)\]", line).group(1)
            for line in loss_lines] == ["200", "400"]
    assert out[-2] == "Done!!"
    assert re.fullmatch(r"Test result: Accuracy: \d\d\.\d\d%, Avg loss: \d\.\d{6}", out[-1])
    assert result.final.accuracy > 0.85
    # the tutorial's test loss: the mean of 157 per-batch means, not sum / 10000
    model, _ = load_model(result.run_dir)
    assert result.final.loss == pytest.approx(read_metrics(result.run_dir)[-1]["test_loss"])


def test_no_shuffle_is_deterministic_and_seeded_shuffle_repeats(tmp_path, mnist_root):
    def weights(name, **flags):
        cfg = resolve(preset="default", flags={"epochs": 1, "limit_train": 2048, **flags})
        run = fit(cfg, out=tmp_path / name, root=mnist_root, console=Console(quiet=True)).run_dir
        return load_model(run)[0].state_dict()

    a, b = weights("a", seed=3), weights("b", seed=3)
    c = weights("c", seed=4)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_existing_run_directory_is_never_overwritten(tmp_path, mnist_root):
    from digitlab.errors import RunDirError

    out = tmp_path / "keep"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    cfg = resolve(flags={"epochs": 1, "limit_train": 256})
    with pytest.raises(RunDirError, match="already holds files"):
        fit(cfg, out=out, root=mnist_root, console=Console(quiet=True))
    fit(cfg, out=out, force=True, root=mnist_root, console=Console(quiet=True))
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "model.safetensors").exists()


def _peak_rss_mb(args: list[str], logs: Path) -> tuple[float, int, str, str]:
    """Run a Python child to completion: its own peak resident memory in MB (wait4's
    ru_maxrss, whatever else this process has run), exit code, stdout and stderr."""
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / "out", "w") as out, open(logs / "err", "w") as err:
        proc = subprocess.Popen([sys.executable, *args], stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    return (usage.ru_maxrss / 1024, proc.returncode, (logs / "out").read_text(),
            (logs / "err").read_text())


def test_training_run_peak_memory_stays_near_the_import_of_torch(tmp_path, mnist_root):
    # A CPU run's peak used to be torch's import plus ~150 MB of torch._dynamo (pulled in by
    # torch.optim), 75-125 MB of CUDA libraries paged in by their destructors at exit, and
    # activations of whole evaluation batches. What a short run may add to the import itself:
    torch_alone, *_ = _peak_rss_mb(["-c", "import os, torch; os._exit(0)"], tmp_path / "t")
    run, code, out, err = _peak_rss_mb(
        ["-m", "digitlab", "train", "--preset", "fast", "--device", "cpu", "--limit-train",
         "1024", "--root", str(mnist_root), "--quiet", "--out", str(tmp_path / "run")],
        tmp_path / "logs")
    assert code == 0, err
    assert "Test result: Accuracy:" in out  # flushed before the process ended
    assert (tmp_path / "run" / WEIGHTS).is_file() and (tmp_path / "run" / METRICS).is_file()
    assert run - torch_alone < 200, f"peak {run:.0f} MB, import torch {torch_alone:.0f} MB"
