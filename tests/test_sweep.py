"""digitlab sweep: space files, the pruner, the best config, and real (tiny) sweeps on real
MNIST through the CLI: outputs, reproducing the winner with `train --config`, Ctrl-C and
resuming."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial
from typer.testing import CliRunner

from digitlab.cli import app
from digitlab.config import resolve
from digitlab.sweep import (
    base_config,
    check_space,
    config_toml,
    load_space,
    make_pruner,
    trial_config,
)

runner = CliRunner()

# Two quick knobs on a small MLP: trials of 1-2 epochs on 800 images take a second or two.
TINY_SPACE = """\
preset = "default"

[fixed]
model = "mlp"
log_every = 0

[fixed.model_args]
hidden = [32]

[model_args.activation]
type = "categorical"
choices = ["relu", "tanh"]

[lr]
type = "float"
low = 1e-3
high = 2e-2
log = true

[epochs]
type = "int"
low = 1
high = 2
"""
TINY_ARGS = ["--limit-train", "1200", "--val-split", "400"]


@pytest.fixture()
def tiny_space(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_SPACE)
    return path


def test_default_space_is_the_tutorials_knobs_and_valid() -> None:
    space = load_space()
    names = {p.name for p in space.params}
    assert {"model_args.activation", "model_args.hidden", "lr", "epochs", "batch_size",
            "optimizer"} <= names
    lr = next(p for p in space.params if p.name == "lr")
    assert lr.type == "float" and lr.log
    epochs = next(p for p in space.params if p.name == "epochs")
    assert (epochs.low, epochs.high) == (3, 15)
    base = base_config(space, preset=None, overrides={"val_split": 5000})
    assert base.model == "mlp" and base.val_split == 5000
    check_space(space, base)


@pytest.mark.parametrize(("text", "message"), [
    ('[lr]\ntype = "normal"\nlow = 1\nhigh = 2\n', "type must be one of"),
    ('[lr]\ntype = "float"\nlow = 0.0\nhigh = 0.1\nlog = true\n', "log = true needs low > 0"),
    ('[lr]\ntype = "float"\nlow = 0.5\nhigh = 0.1\n', "low 0.5 is above high 0.1"),
    ('[epochs]\ntype = "int"\nlow = 1.5\nhigh = 3\n', "whole-number"),
    ('[optimizer]\ntype = "categorical"\nchoices = []\n', "non-empty list"),
    ('[lr]\ntype = "float"\nlow = 0.1\nhigh = 0.2\nsize = 3\n', "unknown key(s) size"),
    ('[learning_rate]\ntype = "float"\nlow = 0.1\nhigh = 0.2\n', "'learning_rate' is not a"),
    ('[val_split]\ntype = "int"\nlow = 1\nhigh = 2\n', "'val_split' is not a"),
    ('[model_args.activation]\ntype = "categorical"\nchoices = ["relu", "swish"]\n',
     "model_args.activation = 'swish' is not usable"),
    ('[model_args.width]\ntype = "int"\nlow = 1\nhigh = 2\n', "has no option width"),
    ('[optimizer]\ntype = "categorical"\nchoices = ["adam", "lbfgs"]\n', "'lbfgs' is not"),
    ("lr = 0.1\n", "`lr` must be a table"),
    ('[fixed]\nmodel = "mlp"\n', "no parameters to search"),
    ("[lr\n", "not valid TOML"),
])
def test_bad_space_files_give_one_clear_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "space.toml"
    path.write_text(text)
    result = runner.invoke(app, ["sweep", "--space", str(path), "--trials", "1"])
    assert result.exit_code == 1, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_best_config_toml_reads_back_to_the_same_config(tmp_path: Path) -> None:
    space = load_space()
    base = base_config(space, preset=None, overrides={"val_split": 5000})
    cfg = trial_config(base, {"model_args.hidden": [1024, 512], "model_args.activation": "gelu",
                              "lr": 0.0012345678901234, "epochs": 7, "optimizer": "adamw"})
    cfg.val_split = 0
    path = tmp_path / "best.toml"
    path.write_text(config_toml(cfg, ["a header line"]))
    assert path.read_text().startswith("# a header line\n")
    assert resolve(config_file=path) == cfg


def _study_with(values: list[dict[int, float]]) -> optuna.Study:
    study = optuna.create_study(direction="maximize", pruner=make_pruner(True))
    dist = {"x": FloatDistribution(0, 1)}
    for steps in values:
        study.add_trial(create_trial(state=TrialState.COMPLETE, value=steps[max(steps)],
                                     params={"x": 0.5}, distributions=dist,
                                     intermediate_values=steps))
    return study


def test_pruner_compares_trials_at_the_same_fraction_of_their_schedule() -> None:
    # Three finished trials: a 4-epoch one (steps 25..100) and two 2-epoch ones (50, 100).
    study = _study_with([{25: 0.80, 50: 0.90, 75: 0.93, 100: 0.95},
                         {50: 0.91, 100: 0.96}, {50: 0.89, 100: 0.94}])

    def pruned(reports: dict[int, float]) -> bool:
        trial = study.ask({"x": FloatDistribution(0, 1)})
        for step, value in reports.items():
            trial.report(value, step)
        decision = trial.should_prune()
        study.tell(trial, state=TrialState.FAIL)
        return decision

    assert pruned({50: 0.85})  # below the median (0.90) at half its schedule
    assert not pruned({50: 0.95})
    # At 60% of a 5-epoch run, the others are read at their last report by then (step 50).
    assert pruned({20: 0.5, 40: 0.6, 60: 0.85}) and not pruned({20: 0.5, 40: 0.6, 60: 0.92})
    assert not pruned({20: 0.10})  # too early in its schedule to judge
    assert pruned({50: float("nan")})
    # Fewer than three finished trials to compare with: never prune.
    young = _study_with([{50: 0.9, 100: 0.95}])
    trial = young.ask({"x": FloatDistribution(0, 1)})
    trial.report(0.1, 50)
    assert not trial.should_prune()


@pytest.mark.slow
def test_sweep_writes_table_best_config_plots_and_reproducible_winner(
        tiny_space: Path, tmp_path: Path, mnist_root: Path) -> None:
    study_dir = tmp_path / "study"
    result = runner.invoke(app, ["sweep", "--space", str(tiny_space), "--trials", "3",
                                 "--dir", str(study_dir), "--root", str(mnist_root),
                                 *TINY_ARGS])
    assert result.exit_code == 0, result.output
    out = result.output
    assert sum(line.startswith("trial ") for line in out.splitlines()) == 3
    assert "study 'tiny': 3 finished trials (3 run by this process)" in out
    assert f"sqlite:///{(study_dir / 'study.db').resolve()}" in out

    with (study_dir / "trials.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["rank"] for r in rows] == ["1", "2", "3"]
    accuracies = [float(r["val_accuracy"]) for r in rows]
    assert accuracies == sorted(accuracies, reverse=True)
    assert {"model_args.activation", "lr", "epochs", "run_dir"} <= set(rows[0])
    for row in rows:
        assert (Path(row["run_dir"]) / "model.safetensors").is_file()

    for png in ("history.png", "importance.png"):
        assert (study_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Trials reported their validation accuracy at each epoch's share of the schedule.
    study = optuna.load_study(study_name="tiny",
                              storage=f"sqlite:///{study_dir / 'study.db'}")
    for trial in study.trials:
        epochs = trial.params["epochs"]
        assert sorted(trial.intermediate_values) == [round(100 * e / epochs)
                                                     for e in range(1, epochs + 1)]

    best = json.loads((study_dir / "best.json").read_text())
    assert best["val_accuracy"] == pytest.approx(accuracies[0])
    assert best["trial"] == int(rows[0]["trial"]) and best["final"] == "refit"
    assert f"test accuracy of the winner (refit): {100 * best['test_accuracy']:.2f}%" in out
    # The test set is only used for the winner: trials are scored on validation images.
    assert "val_split = 0" in (study_dir / "best.toml").read_text()

    # best.toml is a train config; training it again gives the reported test accuracy.
    again = runner.invoke(app, ["train", "--config", str(study_dir / "best.toml"),
                                "--out", str(tmp_path / "again"), "--root", str(mnist_root),
                                "--quiet"])
    assert again.exit_code == 0, again.output
    assert f"Accuracy: {100 * best['test_accuracy']:.2f}%" in again.output


def _sweep_process(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "digitlab", "sweep", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)


@pytest.mark.slow
def test_ctrl_c_keeps_finished_trials_and_the_same_command_resumes(
        tiny_space: Path, tmp_path: Path, mnist_root: Path) -> None:
    study_dir = tmp_path / "study"
    args = ["--space", str(tiny_space), "--dir", str(study_dir), "--root", str(mnist_root),
            "--final", "none", *TINY_ARGS]
    proc = _sweep_process([*args, "--trials", "100"])
    assert proc.stdout is not None
    first = proc.stdout.readline()  # the first finished trial's line
    assert first.startswith("trial   0  complete"), first + proc.stderr.read()
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted: finished trials are kept" in rest
    assert "Traceback" not in err

    storage = f"sqlite:///{study_dir / 'study.db'}"
    study = optuna.load_study(study_name="tiny", storage=storage)
    kept = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(kept) >= 1
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]
    assert (study_dir / "trials.csv").is_file() and (study_dir / "best.toml").is_file()

    # The same command with a total one above what is there runs exactly one more trial.
    started = time.monotonic()
    result = runner.invoke(app, ["sweep", *args, "--trials", str(len(kept) + 1)])
    assert result.exit_code == 0, result.output
    assert f"{len(kept) + 1} finished trials (1 run by this process)" in result.output
    assert time.monotonic() - started < 120
    # ... and once the study holds that many, running it again trains nothing.
    result = runner.invoke(app, ["sweep", *args, "--trials", str(len(kept) + 1)])
    assert result.exit_code == 0 and "(0 run by this process)" in result.output


def test_resuming_with_a_different_space_is_refused(tiny_space: Path, tmp_path: Path,
                                                    mnist_root: Path) -> None:
    import optuna as opt

    study_dir = tmp_path / "study"
    study_dir.mkdir()
    storage = f"sqlite:///{study_dir / 'study.db'}"
    study = opt.create_study(study_name="tiny", storage=storage, direction="maximize")
    study.set_user_attr("signature", "{}")  # as if made from another space
    result = runner.invoke(app, ["sweep", "--space", str(tiny_space), "--dir", str(study_dir),
                                 "--trials", "1", *TINY_ARGS])
    assert result.exit_code == 1
    assert "was run with a different space" in result.output


@pytest.mark.parametrize(("args", "message"), [
    (["--val-split", "0"], "never on the test set"),
    (["--final", "maybe"], "--final must be one of"),
    (["--trials", "0"], "--trials must be at least 1"),
    (["--storage", "nosuchdb://x"], "cannot open storage nosuchdb://x"),
])
def test_sweep_rejects_bad_options(args: list[str], message: str, tiny_space: Path,
                                   tmp_path: Path) -> None:
    result = runner.invoke(app, ["sweep", "--space", str(tiny_space), "--dir",
                                 str(tmp_path / "s"), *args])
    assert result.exit_code == 1, result.output
    assert message in result.output and "Traceback" not in result.output



@pytest.mark.slow
def test_timeout_stops_a_running_trial(tmp_path: Path, mnist_root: Path) -> None:
    space = tmp_path / "two_epochs.toml"
    space.write_text(TINY_SPACE.replace("low = 1\nhigh = 2", "low = 2\nhigh = 2"))
    study_dir = tmp_path / "study"
    result = runner.invoke(app, ["sweep", "--space", str(space), "--timeout", "0.01",
                                 "--dir", str(study_dir), "--root", str(mnist_root),
                                 *TINY_ARGS])
    assert result.exit_code == 0, result.output
    assert "trial   0  failed (--timeout reached during the trial)" in result.output
    assert "0 finished trials (1 run by this process)" in result.output
    study = optuna.load_study(study_name="two_epochs",
                              storage=f"sqlite:///{study_dir / 'study.db'}")
    (trial,) = study.trials
    assert trial.state == TrialState.FAIL and trial.user_attrs["epochs_run"] == 1
    assert not (study_dir / "best.toml").exists()


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://user:s3/cret@127.0.0.1:1/x", "postgresql://user:***@127.0.0.1:1/x"),
    ("postgresql://:s3cret@db/x", "postgresql://:***@db/x"),
    ("postgresql://user:p@ss@db/x", "postgresql://***@db/x"),
    ("postgresql//user:s3cret@h/db", "***@h/db"),  # no '://': SQLAlchemy cannot parse it
    ("postgresql://user:pa%2Fss@db/x?sslmode=require",
     "postgresql://user:***@db/x?sslmode=require"),
    ("postgresql://user@db/x", "postgresql://user@db/x"),
    ("sqlite:////tmp/a@b/study.db", "sqlite:////tmp/a@b/study.db"),
])
def test_storage_urls_are_shown_without_their_password(url: str, shown: str) -> None:
    from digitlab.sweep.storage import redact, scrub

    assert redact(url) == shown
    assert scrub(f"no luck with {url}", url) == f"no luck with {shown}"


@pytest.mark.parametrize("url", ["postgresql://user:s3/cret@127.0.0.1:1/x",
                                 "postgresql://:s3/cret@127.0.0.1:1/x",
                                 "postgresql//user:s3/cret@127.0.0.1:1/x"])
@pytest.mark.slow
@pytest.mark.parametrize("how", ["option", "environment"])
def test_a_storage_that_cannot_be_opened_never_shows_its_password(
        url: str, how: str, tiny_space: Path, tmp_path: Path) -> None:
    args = ["--storage", url] if how == "option" else []
    env = {"DIGITLAB_SWEEP_STORAGE": url} if how == "environment" else {}
    result = runner.invoke(app, ["sweep", "--space", str(tiny_space), "--dir",
                                 str(tmp_path / "s"), *args], env=env)
    assert result.exit_code == 1, result.output
    assert "cannot open storage" in result.output and "127.0.0.1:1/x" in result.output
    assert "cret" not in result.output and "Traceback" not in result.output
