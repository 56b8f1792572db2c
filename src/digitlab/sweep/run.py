"""Running a study: trials as ordinary training runs, Ctrl-C and --timeout, progress."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from digitlab.config import TrainConfig
from digitlab.console import Console
from digitlab.errors import DigitlabError
from digitlab.sweep.report import SweepResult, TrialConsole, short, write_report
from digitlab.sweep.space import SweepError, base_config, check_space, load_space, trial_config
from digitlab.sweep.storage import (
    check_same_space,
    create_study,
    open_storage,
    redact,
    storage_url,
)

FINALS = ("refit", "evaluate", "none")


class _OutOfTime(Exception):
    """A trial still running when --timeout passes is stopped and marked failed."""


class _StopRequest:
    """Ctrl-C between trials asks Optuna to stop after the trial in hand, instead of raising
    KeyboardInterrupt wherever the sweep happens to be (inside a database call, it would leave
    a half-finished transaction and a logged traceback). During training, fit() has its own
    handler and stops cleanly; a second Ctrl-C stops at once."""

    def __init__(self) -> None:
        self.asked = False

    @contextmanager
    def installed(self, study: Any) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def ask(signum: int, frame: Any) -> None:
            if self.asked:
                raise KeyboardInterrupt
            self.asked = True
            study.stop()

        previous = signal.signal(signal.SIGINT, ask)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)


class _DataCache:
    """Trials that share a dataset and normalisation share its tensors: loading and checking
    MNIST again for every trial would cost a second or more each time."""

    def __init__(self, *, root: Path | None, console: Console) -> None:
        self.root, self.console = root, console
        self.loaded: dict[tuple, Any] = {}

    def get(self, cfg: TrainConfig) -> Any:
        from digitlab.device import resolve_device
        from digitlab.engine.train import load_data

        device = resolve_device(cfg.device)
        key = (cfg.dataset, cfg.normalize, cfg.limit_train, cfg.val_split, str(device))
        if key not in self.loaded:
            self.loaded[key] = load_data(cfg, self.root, device, self.console)
        return self.loaded[key]


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class _Progress:
    """One plain line per finished trial; on a terminal also a live bar above them."""

    def __init__(self, console: Console, total: int | None) -> None:
        self.console = console
        self.total = total
        self.bar: Any = None
        self.task: Any = None

    @contextmanager
    def running(self) -> Iterator[_Progress]:
        if not self.console.show_progress:
            yield self
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        columns: list[Any] = ["[progress.description]{task.description}", BarColumn(),
                   MofNCompleteColumn(), TimeElapsedColumn()]
        with Progress(*columns, transient=True) as bar:
            self.bar = bar
            self.task = bar.add_task("sweep", total=self.total)
            try:
                yield self
            finally:
                self.bar = None

    def status(self, text: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, description=text)

    def trial_done(self, line: str) -> None:
        if self.bar is not None:
            self.bar.console.print(line, markup=False, highlight=False)
            self.bar.advance(self.task)
        else:
            self.console.line(line)


def run_sweep(
    *,
    space_file: Path | None = None,
    trials: int | None = None,
    timeout: float | None = None,
    study_name: str | None = None,
    storage: str | None = None,
    preset: str | None = None,
    study_dir: Path | None = None,
    root: Path | None = None,
    val_split: int = 5000,
    limit_train: int | None = None,
    device: str | None = None,
    seed: int = 0,
    prune: bool = True,
    final: str = "refit",
    console: Console | None = None,
) -> SweepResult:
    """Run (or resume, or join) a study until it holds `trials` finished trials or `timeout`
    seconds pass, then write the ranked table, best config and plots, and report the
    winner's test accuracy (`final`: refit on the whole training set, evaluate the winning
    trial's weights, or none)."""
    import optuna
    from optuna.trial import TrialState

    from digitlab.engine.checkpoint import CHECKPOINT, PREVIOUS
    from digitlab.engine.train import Interrupted, fit

    console = console or Console()
    if final not in FINALS:
        raise SweepError(f"--final must be one of {', '.join(FINALS)}; got {final!r}")
    if val_split < 1:
        raise SweepError("--val-split must be at least 1: trials are scored on held-out "
                         "training images, never on the test set")
    if trials is not None and trials < 1:
        raise SweepError("--trials must be at least 1")
    if timeout is not None and timeout <= 0:
        raise SweepError("--timeout must be positive")
    if trials is None and timeout is None:
        trials = 20
    space = load_space(space_file)
    base = base_config(space, preset=preset, overrides={
        "val_split": val_split, "limit_train": limit_train, "device": device, "seed": seed})
    check_space(space, base)
    name = study_name or (space_file.stem if space_file else "tutorial").removeprefix(
        "sweep_space_")
    study_dir = study_dir if study_dir is not None else Path("sweeps") / name
    study_dir.mkdir(parents=True, exist_ok=True)
    url = storage_url(storage, study_dir)
    # Optuna logs a failed trial's traceback as a warning; the sweep's own line says why.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    store = open_storage(url)
    # A fresh sampler seeded only by --seed would replay the same first suggestions on
    # resume; mixing in the trials already there (and the process, when workers share a
    # server) keeps resumed and parallel workers from repeating each other.
    study = create_study(store, name, optuna, prune, seed)
    existing = len(study.trials)
    sampler_seed = seed * 1_000_003 + existing + (os.getpid() if storage else 0)
    study.sampler = optuna.samplers.TPESampler(seed=sampler_seed % 2**32,
                                               n_startup_trials=6, multivariate=True,
                                               group=True)
    check_same_space(study, space, base)

    def finished_count() -> int:
        return len(study.get_trials(deepcopy=False,
                                    states=(TrialState.COMPLETE, TrialState.PRUNED)))

    remaining = None if trials is None else max(0, trials - finished_count())
    worker = _worker_id()
    deadline = time.monotonic() + timeout if timeout else None
    trial_console = TrialConsole()
    data = _DataCache(root=root, console=trial_console)
    progress = _Progress(console, remaining)
    stop = _StopRequest()
    ran_here = 0

    def objective(trial: Any) -> float:
        values = {p.name: p.suggest(trial) for p in space.params}
        cfg = trial_config(base, values)
        run = study_dir / "trials" / f"{trial.number:04d}"
        trial.set_user_attr("worker", worker)
        trial.set_user_attr("run_dir", str(run.resolve()))
        started = time.perf_counter()

        def on_epoch(row: dict[str, Any]) -> None:
            accuracy = row["val_accuracy"]
            trial.set_user_attr("epochs_run", row["epoch"])
            trial.set_user_attr("seconds", time.perf_counter() - started)
            progress.status(f"trial {trial.number}: epoch {row['epoch']}/{cfg.epochs} "
                            f"val {100 * accuracy:.2f}%")
            if stop.asked:  # Ctrl-C before fit() had its own handler in place
                raise KeyboardInterrupt
            trial.report(accuracy, round(100 * row["epoch"] / cfg.epochs))
            if trial.should_prune():
                raise optuna.TrialPruned(f"at epoch {row['epoch']}/{cfg.epochs}")
            if deadline is not None and time.monotonic() > deadline and row["epoch"] < cfg.epochs:
                raise _OutOfTime("--timeout reached during the trial")

        progress.status(f"trial {trial.number}: starting")
        if stop.asked:  # Ctrl-C came after Optuna had already started this trial
            trial.set_user_attr("error", "interrupted")
            raise KeyboardInterrupt
        try:
            result = fit(cfg, out=run, force=True, root=root, console=trial_console,
                         on_epoch=on_epoch, preloaded=data.get(cfg))
        except Interrupted:
            # fit() turns Ctrl-C into a clean stop of its own; for the sweep it ends the study
            trial.set_user_attr("error", "interrupted")
            raise KeyboardInterrupt from None
        except (DigitlabError, _OutOfTime) as exc:
            trial.set_user_attr("error", str(exc))
            raise
        finally:
            # A trial is never resumed: its weights and metrics are what the study needs.
            for leftover in (CHECKPOINT, PREVIOUS):
                (run / leftover).unlink(missing_ok=True)
        return float(result.metrics[-1]["val_accuracy"])

    def after_trial(study: Any, frozen: Any) -> None:
        nonlocal ran_here
        ran_here += 1
        progress.trial_done(trial_line(study, frozen))

    stop_after = optuna.study.MaxTrialsCallback(trials, states=(TrialState.COMPLETE,
                                                                TrialState.PRUNED)) \
        if trials is not None else None
    interrupted = False
    if remaining != 0:
        console.note(f"study {name!r} in {redact(url)}: {existing} trials so far; "
                     f"runs in {study_dir}")
        try:
            with progress.running(), stop.installed(study):
                study.optimize(objective, n_trials=remaining, timeout=timeout,
                               catch=(DigitlabError, _OutOfTime),
                               callbacks=[after_trial] + ([stop_after] if stop_after else []))
        except KeyboardInterrupt:
            interrupted = True
        interrupted = interrupted or stop.asked
    result = SweepResult(study_dir=study_dir, study_name=name, storage=redact(url),
                         finished=finished_count(), ran_here=ran_here, interrupted=interrupted)
    write_report(study, result, base, space, console, root=root, final=final, fit=fit)
    return result


def trial_line(study: Any, frozen: Any) -> str:
    from optuna.trial import TrialState

    state = frozen.state
    seconds = frozen.user_attrs.get("seconds") or (
        (frozen.datetime_complete - frozen.datetime_start).total_seconds()
        if frozen.datetime_complete and frozen.datetime_start else 0.0)
    try:
        best = study.best_trial
        best_text = f"best {100 * best.value:.2f}% (#{best.number})"
    except ValueError:
        best_text = "best -"
    if state == TrialState.COMPLETE:
        what = f"complete  val {100 * frozen.value:.2f}%"
    elif state == TrialState.PRUNED:
        last = frozen.intermediate_values.get(frozen.last_step, float("nan"))
        what = (f"pruned    val {100 * last:.2f}% after epoch "
                f"{frozen.user_attrs.get('epochs_run', '?')}")
    else:
        what = f"failed ({frozen.user_attrs.get('error', 'see the log')})"
    return (f"trial {frozen.number:>3}  {what}  {seconds:6.1f}s  {best_text}  "
            f"{short(frozen.params)}")
