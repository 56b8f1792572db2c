"""`digitlab sweep`: a hyperparameter search, and what it found."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from digitlab.cli.options import Preset, Root

if TYPE_CHECKING:
    from digitlab.sweep import SweepResult


def sweep(
    space: Annotated[Path | None, typer.Option(
        "--space", help="Search space TOML (default: the tutorial's knobs, "
        "assets/sweep_space_tutorial.toml).")] = None,
    trials: Annotated[int | None, typer.Option(
        "--trials", help="Finished trials the study should hold (default 20 when no "
        "--timeout).")] = None,
    timeout: Annotated[float | None, typer.Option(
        "--timeout", help="Stop after this many seconds (a running trial is stopped "
        "too).")] = None,
    study: Annotated[str | None, typer.Option(
        "--study", help="Study name (default: from the space file's name).")] = None,
    storage: Annotated[str | None, typer.Option(
        "--storage", envvar="DIGITLAB_SWEEP_STORAGE", help="Optuna storage URL (default: "
        "sqlite:///<dir>/study.db; postgresql://... to share a study between machines).")
    ] = None,
    preset: Annotated[Preset | None, typer.Option(
        help="Preset the trials start from (default: the space file's).")] = None,
    directory: Annotated[Path | None, typer.Option(
        "--dir", help="Study directory: trial runs, table, best config, plots (default "
        "sweeps/<study>).")] = None,
    val_split: Annotated[int, typer.Option(
        "--val-split", help="Training images held out to score trials (the test set is only "
        "for the winner).")] = 5000,
    limit_train: Annotated[int | None, typer.Option(
        help="Use only the first N training images.")] = None,
    prune: Annotated[bool, typer.Option("--prune/--no-prune",
                                        help="Stop weak trials early.")] = True,
    final: Annotated[str, typer.Option(
        help="How the winner's test accuracy is measured: refit (train best.toml on the "
        "whole training set), evaluate (the trial's own weights) or none.")] = "refit",
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or mps.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for the sampler and every trial.")] = 0,
    root: Root = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q",
                                        help="Print only the results.")] = False,
) -> None:
    """Search hyperparameters with Optuna (TPE, pruning); resumable, shareable via PostgreSQL."""
    from digitlab.console import Console
    from digitlab.sweep import run_sweep

    result = run_sweep(space_file=space, trials=trials, timeout=timeout, study_name=study,
                       storage=storage, preset=preset, study_dir=directory, root=root,
                       val_split=val_split, limit_train=limit_train, device=device, seed=seed,
                       prune=prune, final=final, console=Console(quiet=quiet))
    for line in summary_lines(result):
        typer.echo(line)
    if result.interrupted:
        raise typer.Exit(130)


def summary_lines(result: SweepResult) -> list[str]:
    from digitlab.sweep.report import short

    lines = [f"study {result.study_name!r}: {result.finished} finished trials "
             f"({result.ran_here} run by this process), storage {result.storage}"]
    if result.best_trial is not None and result.best_value is not None:
        lines.append(f"best trial #{result.best_trial}: validation accuracy "
                     f"{100 * result.best_value:.2f}%  {short(result.best_params)}")
    if result.test_accuracy is not None:
        lines.append(f"test accuracy of the winner ({result.final}): "
                     f"{100 * result.test_accuracy:.2f}%")
    for key, path in result.outputs.items():
        lines.append(f"{key.replace('_', ' ')}: {path}")
    if result.interrupted:
        lines.append("interrupted: finished trials are kept; run the same command again to "
                     "continue the study")
    return lines
