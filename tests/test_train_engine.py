"""The training engine's options on small real-MNIST subsets: presets, EMA, augmentation,
mixed precision, torch.compile, channels_last, TensorBoard, and the train/evaluate CLI."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from digitlab.cli import app
from digitlab.config import resolve
from digitlab.console import Console
from digitlab.data.loader import DeviceData
from digitlab.engine import checkpoint
from digitlab.engine.ensemble import evaluate_ensemble
from digitlab.engine.evaluate import evaluate, evaluate_run
from digitlab.engine.precision import Precision
from digitlab.engine.rundir import load_model, read_metrics
from digitlab.engine.train import fit
from digitlab.engine.trainer import Trainer

pytestmark = pytest.mark.slow

SMALL = {"model_args": {"channels": [4, 8], "hidden": 16}, "device": "cpu", "batch_size": 100}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: a second thread gains nothing, and on a shared 2-core machine
    every OpenMP region of two threads waits for the busy core."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def subset(mnist_train_split, mnist_test_split):
    """(1000 training images, 1000 test images, no validation), standard-normalised."""
    cpu = torch.device("cpu")
    train = DeviceData.from_split(mnist_train_split, cpu, "standard", 1000)
    test = DeviceData.from_split(mnist_test_split, cpu, "standard", 1000)
    return train, test, None


def _fit(tmp_path, name, subset, preset="fast", **flags):
    cfg = resolve(preset=preset, flags={**SMALL, **flags})
    return fit(cfg, out=tmp_path / name, console=Console(quiet=True), preloaded=subset)


def test_fast_preset_learns_and_best_preset_runs(tmp_path, subset):
    fast = _fit(tmp_path, "fast", subset, epochs=3)
    assert fast.final.accuracy > 0.75
    assert resolve(preset="fast").model == "cnn-fast"
    best = resolve(preset="best", flags={"device": "cpu", "epochs": 1, "batch_size": 64})
    assert best.model == "cnn-best" and best.ema and best.augment_spec().active
    tiny = (DeviceData(subset[0].x[:128], subset[0].y[:128]),
            DeviceData(subset[1].x[:64], subset[1].y[:64]), None)
    result = fit(best, out=tmp_path / "best", console=Console(quiet=True), preloaded=tiny)
    assert len(result.metrics) == 1 and torch.isfinite(torch.tensor(result.final.loss))
    model, meta = load_model(tmp_path / "best")
    assert meta["model"] == "cnn-best" and meta["model_args"]["kernel"] == 5


def test_cpu_evaluates_in_chunks_no_larger_than_a_training_batch(subset):
    # cnn-best scoring 2,000 images at once took 1.19 GB at peak on a CPU, against 0.83 GB
    # in batches of 128; and a loss averaged per batch must still use the batch it was given
    test = DeviceData(subset[1].x[:300], subset[1].y[:300])
    cfg = resolve(preset="fast", flags={**SMALL, "eval_batch_size": 250, "batch_size": 64})
    trainer = Trainer(cfg, torch.device("cpu"))
    seen: list[int] = []
    trainer.eval_model.register_forward_pre_hook(lambda module, args: seen.append(len(args[0])))
    chunked = trainer.evaluate(test)
    assert seen == [64, 64, 64, 64, 44]
    whole = evaluate(trainer.eval_model, test, batch_size=300)
    assert chunked.count == whole.count == 300 and chunked.accuracy == whole.accuracy
    assert chunked.loss == pytest.approx(whole.loss, rel=1e-5)
    seen.clear()
    trainer.evaluate(test, loss_average="batch")
    assert seen == [250, 50]
    assert trainer.eval_batch_size() == 64
    assert Trainer(resolve(preset="fast", flags={**SMALL, "eval_batch_size": 32}),
                   torch.device("cpu")).eval_batch_size() == 32


def test_ema_weights_are_the_ones_evaluated_and_saved(tmp_path, subset):
    run = _fit(tmp_path, "ema", subset, ema=0.95, epochs=1)
    state = checkpoint.read(run.run_dir / "checkpoint.pt")
    saved = load_file(run.run_dir / "model.safetensors")
    for key, value in state["ema"]["module"].items():
        assert torch.equal(saved[key], value)
    raw = state["model"]
    assert any(not torch.equal(raw[k], saved[k]) for k in saved)
    assert state["ema"]["updates"] == 10  # 1000 images, batch 100


def test_augmentation_changes_training_and_is_seeded(tmp_path, subset):
    small = (DeviceData(subset[0].x[:300], subset[0].y[:300]),
             DeviceData(subset[1].x[:100], subset[1].y[:100]), None)

    def weights(name, **flags):
        _fit(tmp_path, name, small, epochs=1, **flags)
        return load_file(tmp_path / name / "model.safetensors")

    aug = {"aug_rotate": 15.0, "aug_translate": 2.0, "aug_elastic": 1.5}
    plain, a, b = weights("plain"), weights("a", **aug), weights("b", **aug)
    c = weights("c", seed=1, **aug)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], plain[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_channels_last_and_compiled_models_save_plain_state(tmp_path, subset, monkeypatch):
    trainer = Trainer(resolve(preset="fast", flags=SMALL), torch.device("cpu"))
    conv = [m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d)][-1].weight
    assert conv.shape == (8, 4, 3, 3)  # more than one input channel: the layouts differ
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    # The eager backend exercises the wrapper without minutes of C++ compilation.
    monkeypatch.setenv("DIGITLAB_COMPILE_BACKEND", "eager")
    run = _fit(tmp_path, "compiled", subset, epochs=1, compile=True)
    keys = set(load_file(run.run_dir / "model.safetensors"))
    assert keys and not any("_orig_mod" in k for k in keys)
    assert not any("_orig_mod" in k for k in checkpoint.read(run.run_dir / "checkpoint.pt")
                   ["model"])
    again = evaluate(load_model(run.run_dir)[0], subset[1], batch_size=2000)
    assert again.accuracy == run.final.accuracy


def test_bf16_autocast_trains_on_cpu(tmp_path, subset):
    run = _fit(tmp_path, "bf16", subset, epochs=2, amp="bf16")
    assert run.final.accuracy > 0.5
    assert json.loads((run.run_dir / "config.json").read_text())["amp_used"] == "bf16"
    assert Precision("auto", torch.device("cpu")).mode == "none"


def test_fp16_loss_scale_unscales_and_skips_overflows():
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 3)
    x, y = torch.randn(8, 6), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    torch.nn.functional.cross_entropy(model(x), y).backward()
    expected = [p.grad.clone() for p in model.parameters()]
    precision = Precision("fp16", torch.device("cpu"))
    wrapped = precision.wrap(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    model.zero_grad()
    precision.scale_loss(torch.nn.functional.cross_entropy(wrapped(x), y)).backward()
    assert model.weight.grad.abs().max() > 1000 * expected[0].abs().max()  # scaled by 2**16
    assert precision.step(optimizer)
    for p, e in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, e, rtol=2e-2, atol=1e-4)  # fp16 forward
    precision.scale_loss(torch.nn.functional.cross_entropy(wrapped(x), y)).backward()
    model.weight.grad[0, 0] = float("inf")
    before = precision.scaler.get_scale()
    assert not precision.step(optimizer)
    assert precision.scaler.get_scale() == before / 2 and precision.skipped == 1
    # The scale and its run of good steps travel in a checkpoint, and one written before
    # GradScaler (a bare scale and count) still loads.
    again = Precision("fp16", torch.device("cpu"))
    again.load_state_dict(precision.state_dict())
    assert again.scaler.get_scale() == before / 2 and again.skipped == 1
    old = Precision("fp16", torch.device("cpu"))
    old.load_state_dict({"mode": "fp16", "scale": 1024.0, "good_steps": 2001, "skipped": 3})
    assert old.scaler.get_scale() == 1024.0 and old.skipped == 3
    assert old.scaler.state_dict()["_growth_tracker"] == 1


def test_fp16_training_steps_and_resumes_exactly(tmp_path, subset):
    """A float16 run through the whole loop: the step applies the loss scale, the scaler's
    state is checkpointed, and a run stopped after its first epoch and resumed ends with the
    weights of one never stopped."""
    whole = _fit(tmp_path, "fp16", subset, epochs=2, amp="fp16")
    assert whole.final.accuracy > 0.5
    assert json.loads((whole.run_dir / "config.json").read_text())["amp_used"] == "fp16"
    assert checkpoint.read(whole.run_dir / "checkpoint.pt")["precision"]["scaler"]["scale"] > 1

    class Stop(Exception):
        pass

    def stop_after_first(row):
        raise Stop

    cfg = resolve(preset="fast", flags={**SMALL, "epochs": 2, "amp": "fp16"})
    with pytest.raises(Stop):
        fit(cfg, out=tmp_path / "stopped", console=Console(quiet=True), preloaded=subset,
            on_epoch=stop_after_first)
    state, _ = checkpoint.load(tmp_path / "stopped")
    fit(cfg, out=tmp_path / "stopped", console=Console(quiet=True), preloaded=subset,
        resume_from=state)
    a, b = (load_file(r / "model.safetensors") for r in (whole.run_dir, tmp_path / "stopped"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_tensorboard_gets_scalars_and_sample_images(tmp_path, subset):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = resolve(preset="fast", flags={**SMALL, "epochs": 2, "aug_rotate": 20.0})
    result = fit(cfg, out=tmp_path / "run", console=Console(quiet=True), preloaded=subset,
                 tensorboard=tmp_path / "tb")
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tags = events.Tags()
    assert {"train/loss", "test/loss", "test/accuracy", "lr"} <= set(tags["scalars"])
    assert tags["images"] == ["train/samples"]
    accuracy = [e.value for e in events.Scalars("test/accuracy")]
    assert accuracy == pytest.approx([r["test_accuracy"] for r in result.metrics])


def test_cli_train_flags_land_in_the_run_config(tmp_path, mnist_root):
    runner = CliRunner()
    out = tmp_path / "cli"
    result = runner.invoke(app, [
        "train", "--preset", "fast", "--limit-train", "512", "--epochs", "1", "--device",
        "cpu", "--augment", "rotate=12,translate=1.5", "--ema", "0.9", "--amp", "none",
        "--checkpoint-every", "1", "--no-compile", "--out", str(out), "--root",
        str(mnist_root), "--quiet"])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "config.json").read_text())
    assert (saved["aug_rotate"], saved["aug_translate"], saved["aug_scale"]) == (12.0, 1.5, 0.0)
    assert (saved["ema"], saved["amp"], saved["checkpoint_every"]) == (0.9, "none", 1)
    assert saved["compile"] is False
    for args, message in [
        (["--augment", "flip=1"], "--augment takes name=value pairs"),
        (["--ema", "1.5"], "--ema must be less than 1, got 1.5"),
        (["--resume", str(out), "--out", str(tmp_path / "x")], "drop --out"),
        (["--resume", str(tmp_path / "nowhere")], "no such run directory"),
    ]:
        bad = runner.invoke(app, ["train", *args, "--root", str(mnist_root)])
        assert bad.exit_code == 1 and message in bad.output, (args, bad.output)
    # A choice the option does not list is a usage error (exit 2), before any work.
    bad = runner.invoke(app, ["train", "--amp", "fp8", "--root", str(mnist_root)])
    assert bad.exit_code == 2 and "'fp8' is not one of" in bad.output


def test_evaluate_several_runs_reports_members_and_ensemble(tmp_path, mnist_root,
                                                            mnist_test_split, subset):
    runs = []
    for seed in (0, 1):
        runs.append(_fit(tmp_path, f"m{seed}", subset, epochs=2, seed=seed).run_dir)
    ens = evaluate_ensemble(runs, root=mnist_root, device="cpu")
    single = evaluate_run(runs[0], root=mnist_root, device="cpu")
    assert ens.members[0].result.accuracy == single.accuracy
    assert ens.members[0].result.loss == pytest.approx(single.loss)
    probs = [m.result.probabilities for m in ens.members]
    mean = (probs[0] + probs[1]) / 2
    labels = torch.from_numpy(mnist_test_split.labels.astype("int64"))
    assert ens.ensemble.accuracy == (mean.argmax(1) == labels).float().mean().item()

    runner = CliRunner()
    text = runner.invoke(app, ["evaluate", *map(str, runs), "--device", "cpu", "--root",
                               str(mnist_root)])
    assert text.exit_code == 0, text.output
    lines = text.output.splitlines()
    assert lines[0].startswith(str(runs[0])) and f"{100 * single.accuracy:.2f}%" in lines[0]
    assert lines[2].startswith("ensemble of 2: Test result: Accuracy: "
                               f"{100 * ens.ensemble.accuracy:.2f}%")
    as_json = json.loads(runner.invoke(app, ["evaluate", str(runs[0]), "--json", "--tta",
                                             "--device", "cpu", "--root",
                                             str(mnist_root)]).output)
    assert as_json["tta"] is True and len(as_json["members"]) == 1
    assert as_json["ensemble"]["accuracy"] == as_json["members"][0]["accuracy"] > 0.5
    assert as_json["ensemble"]["loss"] != pytest.approx(single.loss)  # the views count
    bad = runner.invoke(app, ["evaluate", *map(str, runs), "--report", str(tmp_path / "r")])
    assert bad.exit_code == 1 and "--report takes a single run" in bad.output
    assert [r["epoch"] for r in read_metrics(runs[0])] == [1, 2]
