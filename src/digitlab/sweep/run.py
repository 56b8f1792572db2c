"""Running a study: trials as ordinary training runs, Ctrl-C and --timeout, progress."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from digitlab.config import TrainConfig
from digitlab.console import Console
from digitlab.errors import DigitlabError
from digitlab.sweep.report import SweepResult, TrialConsole, short, write_report
from digitlab.sweep.space import (
    Space,
    SweepError,
    base_config,
    check_space,
    load_space,
    trial_config,
)
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


class _Objective:
    """Optuna's objective: one trial is an ordinary training run, whose per-epoch validation
    accuracy is reported for pruning."""

    def __init__(self, space: Space, base: TrainConfig, study_dir: Path, *,
                 root: Path | None, progress: _Progress, stop: _StopRequest,
                 deadline: float | None) -> None:
        self.space, self.base, self.study_dir, self.root = space, base, study_dir, root
        self.progress, self.stop, self.deadline = progress, stop, deadline
        self.console = TrialConsole()
        self.data = _DataCache(root=root, console=self.console)
        self.worker = _worker_id()
        self.ran_here = 0

    def __call__(self, trial: Any) -> float:
        from digitlab.engine.checkpoint import CHECKPOINT, PREVIOUS
        from digitlab.engine.train import Interrupted, fit

        cfg = trial_config(self.base, {p.name: p.suggest(trial) for p in self.space.params})
        run = self.study_dir / "trials" / f"{trial.number:04d}"
        trial.set_user_attr("worker", self.worker)
        trial.set_user_attr("run_dir", str(run.resolve()))
        self.progress.status(f"trial {trial.number}: starting")
        if self.stop.asked:  # Ctrl-C came after Optuna had already started this trial
            trial.set_user_attr("error", "interrupted")
            raise KeyboardInterrupt
        try:
            result = fit(cfg, out=run, force=True, root=self.root, console=self.console,
                         on_epoch=self._on_epoch(trial, cfg), preloaded=self.data.get(cfg))
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

    def _on_epoch(self, trial: Any, cfg: TrainConfig) -> Callable[[dict[str, Any]], None]:
        import optuna

        started = time.perf_counter()

        def on_epoch(row: dict[str, Any]) -> None:
            accuracy = row["val_accuracy"]
            trial.set_user_attr("epochs_run", row["epoch"])
            trial.set_user_attr("seconds", time.perf_counter() - started)
            self.progress.status(f"trial {trial.number}: epoch {row['epoch']}/{cfg.epochs} "
                                 f"val {100 * accuracy:.2f}%")
            if self.stop.asked:  # Ctrl-C before fit() had its own handler in place
                raise KeyboardInterrupt
            trial.report(accuracy, round(100 * row["epoch"] / cfg.epochs))
            if trial.should_prune():
                raise optuna.TrialPruned(f"at epoch {row['epoch']}/{cfg.epochs}")
            if (self.deadline is not None and time.monotonic() > self.deadline
                    and row["epoch"] < cfg.epochs):
                raise _OutOfTime("--timeout reached during the trial")

        return on_epoch

    def after_trial(self, study: Any, frozen: Any) -> None:
        self.ran_here += 1
        self.progress.trial_done(trial_line(study, frozen))


def _check_options(*, final: str, val_split: int, trials: int | None,
                   timeout: float | None) -> int | None:
    """The number of trials to reach (20 when neither it nor a timeout is given)."""
    if final not in FINALS:
        raise SweepError(f"--final must be one of {', '.join(FINALS)}; got {final!r}")
    if val_split < 1:
        raise SweepError("--val-split must be at least 1: trials are scored on held-out "
                         "training images, never on the test set")
    if trials is not None and trials < 1:
        raise SweepError("--trials must be at least 1")
    if timeout is not None and timeout <= 0:
        raise SweepError("--timeout must be positive")
    return 20 if trials is None and timeout is None else trials


def _open_study(url: str, name: str, *, shared: bool, prune: bool, seed: int) -> Any:
    import optuna

    # Optuna logs a failed trial's traceback as a warning; the sweep's own line says why.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    study = create_study(open_storage(url), name, optuna, prune, seed)
    # A fresh sampler seeded only by --seed would replay the same first suggestions on
    # resume; mixing in the trials already there (and the process, when workers share a
    # server) keeps resumed and parallel workers from repeating each other.
    sampler_seed = seed * 1_000_003 + len(study.trials) + (os.getpid() if shared else 0)
    study.sampler = optuna.samplers.TPESampler(seed=sampler_seed % 2**32,
                                               n_startup_trials=6, multivariate=True,
                                               group=True)
    return study


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

    from digitlab.engine.train import fit

    console = console or Console()
    trials = _check_options(final=final, val_split=val_split, trials=trials, timeout=timeout)
    space = load_space(space_file)
    base = base_config(space, preset=preset, overrides={
        "val_split": val_split, "limit_train": limit_train, "device": device, "seed": seed})
    check_space(space, base)
    name = study_name or (space_file.stem if space_file else "tutorial").removeprefix(
        "sweep_space_")
    study_dir = study_dir if study_dir is not None else Path("sweeps") / name
    study_dir.mkdir(parents=True, exist_ok=True)
    url = storage_url(storage, study_dir)
    study = _open_study(url, name, shared=bool(storage), prune=prune, seed=seed)
    existing = len(study.trials)
    check_same_space(study, space, base)
    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    remaining = None if trials is None else max(
        0, trials - len(study.get_trials(deepcopy=False, states=finished)))
    progress, stop = _Progress(console, remaining), _StopRequest()
    objective = _Objective(space, base, study_dir, root=root, progress=progress, stop=stop,
                           deadline=time.monotonic() + timeout if timeout else None)
    callbacks = [objective.after_trial] + (
        [optuna.study.MaxTrialsCallback(trials, states=finished)] if trials is not None else [])
    interrupted = False
    if remaining != 0:
        console.note(f"study {name!r} in {redact(url)}: {existing} trials so far; "
                     f"runs in {study_dir}")
        try:
            with progress.running(), stop.installed(study):
                study.optimize(objective, n_trials=remaining, timeout=timeout,
                               catch=(DigitlabError, _OutOfTime), callbacks=callbacks)
        except KeyboardInterrupt:
            interrupted = True
        interrupted = interrupted or stop.asked
    result = SweepResult(study_dir=study_dir, study_name=name, storage=redact(url),
                         finished=len(study.get_trials(deepcopy=False, states=finished)),
                         ran_here=objective.ran_here, interrupted=interrupted)
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
