"""Hyperparameter search with Optuna: what the tutorial asks its reader to do by hand.

Each trial is an ordinary training run (fit()) on the training set minus a held-out
validation part; its per-epoch validation accuracy drives TPE and pruning. The test set is
touched once, for the winner only. Trials live in an Optuna storage (SQLite in the study's
directory by default, so an interrupted sweep resumes; PostgreSQL for many machines).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import signal
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from digitlab.config import TrainConfig, field_names, from_dict, load_toml, resolve
from digitlab.console import Console
from digitlab.errors import DigitlabError
from digitlab.files import atomic_write

DEFAULT_SPACE = "sweep_space_tutorial.toml"
FINALS = ("refit", "evaluate", "none")
TYPES = ("categorical", "float", "int")
# Settings a space may not search or fix: they are the sweep's own business.
_RESERVED = {"val_split", "preset", "tutorial_log"}
_FINISHED = ("COMPLETE", "PRUNED")


class SweepError(DigitlabError):
    """A search space, study or storage problem the user can fix."""


# --- the search space -------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    name: str  # a TrainConfig field, or model_args.<option>
    type: str
    choices: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None

    def suggest(self, trial: Any) -> Any:
        if self.type == "categorical":
            # Optuna's choices must be scalars; lists (hidden sizes) travel as "512,256".
            labels = [_label(c) for c in self.choices]
            picked = trial.suggest_categorical(self.name, labels)
            return self.choices[labels.index(picked)]
        assert self.low is not None and self.high is not None  # checked by _param
        if self.type == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log,
                                     step=int(self.step or 1))
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log,
                                   step=self.step)

    def corners(self) -> list[Any]:
        """Values to try when checking that the space only produces valid configs."""
        return list(self.choices) if self.type == "categorical" else [self.low, self.high]

    def describe(self) -> dict[str, Any]:
        return {k: v for k, v in (("type", self.type), ("choices", list(self.choices)),
                                  ("low", self.low), ("high", self.high), ("log", self.log),
                                  ("step", self.step)) if v not in (None, (), [], False)}


def _label(value: Any) -> Any:
    return ",".join(str(v) for v in value) if isinstance(value, list) else value


@dataclass
class Space:
    params: list[Param]
    fixed: dict[str, Any] = field(default_factory=dict)
    preset: str | None = None
    source: str = ""

    def signature(self) -> str:
        """What a study remembers of its space, to refuse resuming with a different one."""
        return json.dumps({"preset": self.preset, "fixed": self.fixed,
                           "params": {p.name: p.describe() for p in self.params}},
                          sort_keys=True)


def default_space_path() -> Path:
    return Path(str(resources.files("digitlab") / "assets" / DEFAULT_SPACE))


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SweepError(f"{what} must be a number, got {value!r}")
    return value


def _param(name: str, table: dict[str, Any], source: str) -> Param:
    where = f"{source}: [{name}]"
    kind = table.get("type")
    if kind not in TYPES:
        raise SweepError(f"{where}: type must be one of {', '.join(TYPES)}; got {kind!r}")
    allowed = {"type", "choices"} if kind == "categorical" else {"type", "low", "high", "log",
                                                                "step"}
    extra = set(table) - allowed
    if extra:
        raise SweepError(f"{where}: unknown key(s) {', '.join(sorted(extra))} for type {kind}")
    if kind == "categorical":
        choices = table.get("choices")
        if not isinstance(choices, list) or not choices:
            raise SweepError(f"{where}: categorical needs a non-empty list `choices`")
        return Param(name, kind, choices=tuple(choices))
    if "low" not in table or "high" not in table:
        raise SweepError(f"{where}: {kind} needs `low` and `high`")
    low, high = _number(table["low"], f"{where} low"), _number(table["high"], f"{where} high")
    log, step = table.get("log", False), table.get("step")
    if not isinstance(log, bool):
        raise SweepError(f"{where}: log must be true or false")
    if step is not None and _number(step, f"{where} step") <= 0:
        raise SweepError(f"{where}: step must be positive")
    if kind == "int" and not all(isinstance(v, int) for v in (low, high, step or 1)):
        raise SweepError(f"{where}: an int parameter needs whole-number low, high and step")
    if low > high:
        raise SweepError(f"{where}: low {low} is above high {high}")
    if log and (low <= 0 or step is not None):
        raise SweepError(f"{where}: log = true needs low > 0 and no step")
    return Param(name, kind, low=low, high=high, log=log, step=step)


def load_space(path: Path | None = None) -> Space:
    """Read and check a space file (the packaged tutorial space when path is None)."""
    path = path if path is not None else default_space_path()
    data = load_toml(path)
    source = str(path)
    preset = data.pop("preset", None)
    if preset is not None and not isinstance(preset, str):
        raise SweepError(f"{source}: preset must be a string")
    fixed = data.pop("fixed", {})
    if not isinstance(fixed, dict):
        raise SweepError(f"{source}: [fixed] must be a table of settings")
    params: list[Param] = []
    for key, value in data.items():
        if not isinstance(value, dict):
            raise SweepError(f"{source}: `{key}` must be a table with a type (or go in [fixed])")
        if key == "model_args" and "type" not in value:
            for option, table in value.items():
                if not isinstance(table, dict):
                    raise SweepError(f"{source}: model_args.{option} must be a table")
                params.append(_param(f"model_args.{option}", table, source))
        else:
            params.append(_param(key, value, source))
    known = field_names() - _RESERVED
    for name in [p.name for p in params] + list(fixed):
        if not name.startswith("model_args.") and name not in known and name != "model_args":
            raise SweepError(f"{source}: {name!r} is not a setting a sweep can search or fix")
    if not params:
        raise SweepError(f"{source}: no parameters to search")
    space = Space(params=params, fixed=fixed, preset=preset, source=source)
    return space


def base_config(space: Space, *, preset: str | None, overrides: dict[str, Any]) -> TrainConfig:
    flags = {**space.fixed, **{k: v for k, v in overrides.items() if v is not None}}
    return resolve(preset=preset or space.preset, flags=flags)


def trial_config(base: TrainConfig, values: dict[str, Any]) -> TrainConfig:
    """The base config with one trial's values (model_args.* merged into model_args)."""
    from digitlab.models.registry import model_args

    data = base.to_dict()
    data["model_args"] = dict(data["model_args"])
    for name, value in values.items():
        if name.startswith("model_args."):
            data["model_args"][name.split(".", 1)[1]] = value
        else:
            data[name] = value
    cfg = from_dict(data).validate()
    model_args(cfg.model, **cfg.model_args)  # unknown model options fail here, not mid-sweep
    return cfg


def check_space(space: Space, base: TrainConfig) -> None:
    """Every choice and bound of every parameter must make a valid config on its own."""
    from digitlab.models.registry import create_model

    for param in space.params:
        for value in param.corners():
            try:
                cfg = trial_config(base, {param.name: value})
                if param.name.startswith("model_args."):
                    create_model(cfg.model, **cfg.model_args)
            except DigitlabError as exc:
                raise SweepError(f"{space.source}: {param.name} = {value!r} is not usable "
                                 f"({exc})") from None


# --- pruning ----------------------------------------------------------------------------


def _pruner_class() -> type:
    from optuna.pruners import BasePruner
    from optuna.trial import TrialState

    class ProgressMedianPruner(BasePruner):
        """Median pruning where a step is the percentage of the trial's own schedule done.

        Trials differ in epochs, and with one-cycle or cosine schedules a 15-epoch run is
        still at a high learning rate when a 3-epoch run has finished annealing. Comparing
        them at the same epoch would prune long runs for being long; comparing them at the
        same fraction of their schedule does not."""

        def __init__(self, *, n_startup_trials: int = 3, min_progress: int = 25) -> None:
            self.n_startup_trials = n_startup_trials
            self.min_progress = min_progress

        def prune(self, study: Any, trial: Any) -> bool:
            step = trial.last_step
            if step is None or step < self.min_progress or step >= 100:
                return False
            done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if len(done) < self.n_startup_trials:
                return False
            others = study.get_trials(deepcopy=False,
                                      states=(TrialState.COMPLETE, TrialState.PRUNED))
            values = []
            for other in others:
                steps = [s for s in other.intermediate_values if s <= step]
                # only trials that got at least this far, read at their last report by then
                if other.number != trial.number and steps and other.last_step >= step:
                    values.append(other.intermediate_values[max(steps)])
            if len(values) < self.n_startup_trials:
                return False
            here = trial.intermediate_values[step]
            return math.isnan(here) or here < float(np.median(values))

    return ProgressMedianPruner


def make_pruner(enabled: bool) -> Any:
    from optuna.pruners import NopPruner

    return _pruner_class()() if enabled else NopPruner()


# --- storage and study ------------------------------------------------------------------


def storage_url(storage: str | None, study_dir: Path) -> str:
    if storage:
        return storage
    return f"sqlite:///{(study_dir / 'study.db').resolve()}"


def driver_url(url: str) -> str:
    """postgresql:// (or postgres://) with the PostgreSQL driver that is installed named in it:
    SQLAlchemy 2.1 picks psycopg 3 for a bare postgresql://, while digitlab[sweep] installs
    psycopg2."""
    import importlib.util

    scheme, sep, rest = url.partition("://")
    if scheme not in ("postgresql", "postgres"):
        return url
    for module, dialect in (("psycopg", "postgresql+psycopg"), ("psycopg2", "postgresql+psycopg2")):
        if importlib.util.find_spec(module) is not None:
            return f"{dialect}{sep}{rest}"
    raise SweepError("--storage postgresql://... needs a PostgreSQL driver: "
                     "pip install 'digitlab[sweep]' (psycopg2)")


def open_storage(url: str) -> Any:
    import optuna
    from sqlalchemy.exc import DBAPIError

    engine_kwargs = None if url.startswith("sqlite") else {"pool_pre_ping": True}
    last = ""
    # Workers started together may race to create the tables of a new database; the loser
    # of that race succeeds when it tries again.
    for attempt in range(3):
        try:
            # The heartbeat lets any worker mark a crashed worker's running trial as failed.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(driver_url(url), heartbeat_interval=60,
                                                  grace_period=180, engine_kwargs=engine_kwargs)
        except SweepError:
            raise
        except DBAPIError as exc:  # the server answered (or did not): worth another try
            last = _first_line(exc)
            time.sleep(0.5 * (attempt + 1))
        except Exception as exc:  # a bad URL, a missing driver: no point trying again
            raise SweepError(f"cannot open storage {_redact(url)}: "
                             f"{_scrub(_first_line(exc), url)}") from None
    raise SweepError(f"cannot open storage {_redact(url)}: {_scrub(last, url)}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _credentials(url: str) -> str:
    """Everything before the last '@' (after '://' where there is one): where a user name
    and password would be, however oddly the URL is written."""
    if "@" not in url:
        return ""
    head = url[: url.rindex("@")]
    return head.partition("://")[2] if "://" in head else head


def _redact(url: str) -> str:
    """The storage URL without its password, for messages: SQLAlchemy's own rendering where
    it reads the URL as the user meant it, else everything before the last '@' masked."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        parsed = None
    if parsed is not None and parsed.password is None:
        return url  # nothing to hide (and a SQLite path is shown as written)
    # A second '@' is one SQLAlchemy reads as part of the host: only the fallback hides it.
    if parsed is not None and url.count("@") == 1:
        return parsed.render_as_string(hide_password=True)
    secret = _credentials(url)
    return url.replace(secret, "***", 1) if secret else url


def _scrub(text: str, url: str) -> str:
    """A message about the storage without the URL's password, wherever the URL (or its
    user:password part) appears in it."""
    text = text.replace(url, _redact(url))
    secret = _credentials(url)
    return text.replace(secret, "***") if ":" in secret else text


# --- running ----------------------------------------------------------------------------


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


class _TrialConsole(Console):
    """Trials train silently; the sweep prints one line per trial instead."""

    def __init__(self) -> None:
        super().__init__(quiet=True, progress=False)

    def result(self, text: str) -> None:
        pass


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


@dataclass
class SweepResult:
    study_dir: Path
    study_name: str
    storage: str
    finished: int  # finished (complete or pruned) trials in the study
    ran_here: int  # trials this process ran
    interrupted: bool
    best_trial: int | None = None
    best_value: float | None = None
    best_params: dict[str, Any] = field(default_factory=dict)
    test_accuracy: float | None = None
    final: str = "none"
    outputs: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _short(params: dict[str, Any]) -> str:
    parts = []
    for name, value in params.items():
        key = name.split(".", 1)[-1]
        text = f"{value:.3g}" if isinstance(value, float) else str(value)
        parts.append(f"{key}={text}")
    return " ".join(parts)


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
    study = _create_study(store, name, optuna, prune, seed)
    existing = len(study.trials)
    sampler_seed = seed * 1_000_003 + existing + (os.getpid() if storage else 0)
    study.sampler = optuna.samplers.TPESampler(seed=sampler_seed % 2**32,
                                               n_startup_trials=6, multivariate=True,
                                               group=True)
    _check_same_space(study, space, base)

    def finished_count() -> int:
        return len(study.get_trials(deepcopy=False,
                                    states=(TrialState.COMPLETE, TrialState.PRUNED)))

    remaining = None if trials is None else max(0, trials - finished_count())
    worker = _worker_id()
    deadline = time.monotonic() + timeout if timeout else None
    trial_console = _TrialConsole()
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
        progress.trial_done(_trial_line(study, frozen))

    stop_after = optuna.study.MaxTrialsCallback(trials, states=(TrialState.COMPLETE,
                                                                TrialState.PRUNED)) \
        if trials is not None else None
    interrupted = False
    if remaining != 0:
        console.note(f"study {name!r} in {_redact(url)}: {existing} trials so far; "
                     f"runs in {study_dir}")
        try:
            with progress.running(), stop.installed(study):
                study.optimize(objective, n_trials=remaining, timeout=timeout,
                               catch=(DigitlabError, _OutOfTime),
                               callbacks=[after_trial] + ([stop_after] if stop_after else []))
        except KeyboardInterrupt:
            interrupted = True
        interrupted = interrupted or stop.asked
    result = SweepResult(study_dir=study_dir, study_name=name, storage=_redact(url),
                         finished=finished_count(), ran_here=ran_here, interrupted=interrupted)
    _report(study, result, base, space, console, root=root, final=final, fit=fit)
    return result


def _create_study(store: Any, name: str, optuna: Any, prune: bool, seed: int) -> Any:
    try:
        return optuna.create_study(study_name=name, storage=store, direction="maximize",
                                   load_if_exists=True, pruner=make_pruner(prune),
                                   sampler=optuna.samplers.TPESampler(seed=seed))
    except Exception as exc:
        first = str(exc).strip().splitlines()
        raise SweepError(f"cannot open study {name!r}: "
                         f"{first[0] if first else type(exc).__name__}") from None


def _check_same_space(study: Any, space: Space, base: TrainConfig) -> None:
    signature = json.dumps({"space": json.loads(space.signature()),
                            "base": _comparable(base)}, sort_keys=True)
    stored = study.user_attrs.get("signature")
    if stored is None:
        study.set_user_attr("signature", signature)
    elif stored != signature:
        raise SweepError(f"study {study.study_name!r} was run with a different space or base "
                         "settings; give a new --study name (or the same settings)")


def _comparable(cfg: TrainConfig) -> dict[str, Any]:
    # The device a worker trains on may differ between machines of one study.
    return {k: v for k, v in cfg.to_dict().items() if k != "device"}


def _trial_line(study: Any, frozen: Any) -> str:
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
            f"{_short(frozen.params)}")


# --- results ----------------------------------------------------------------------------


def ranked_trials(study: Any) -> list[Any]:
    """Complete trials by validation accuracy, then pruned ones by their last value, then
    the rest (failed, running)."""
    from optuna.trial import TrialState

    def key(t: Any) -> tuple[int, float]:
        if t.state == TrialState.COMPLETE:
            return (0, -t.value)
        if t.state == TrialState.PRUNED and t.last_step is not None:
            return (1, -t.intermediate_values[t.last_step])
        return (2, float(t.number))

    return sorted(study.get_trials(deepcopy=False), key=key)


def _row(rank: int, t: Any, names: list[str]) -> dict[str, Any]:
    from optuna.trial import TrialState

    val = t.value if t.state == TrialState.COMPLETE else (
        t.intermediate_values[t.last_step] if t.last_step is not None else None)
    row = {"rank": rank, "trial": t.number, "state": t.state.name.lower(),
           "val_accuracy": val, "epochs_run": t.user_attrs.get("epochs_run"),
           "seconds": t.user_attrs.get("seconds"), "worker": t.user_attrs.get("worker")}
    row.update({n: t.params.get(n) for n in names})
    row["run_dir"] = t.user_attrs.get("run_dir")
    return row


def write_table(study: Any, space: Space, path: Path) -> list[dict[str, Any]]:
    names = [p.name for p in space.params]
    rows = [_row(i, t, names) for i, t in enumerate(ranked_trials(study), 1)]
    buffer = io.StringIO()
    columns = ["rank", "trial", "state", "val_accuracy", "epochs_run", "seconds", "worker",
               *names, "run_dir"]
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, buffer.getvalue().encode())
    return rows


def format_table(rows: list[dict[str, Any]], names: list[str], limit: int = 10) -> str:
    header = ["rank", "trial", "state", "val acc", "epochs", "time"] + [
        n.split(".", 1)[-1] for n in names]
    lines = [header]
    for row in rows[:limit]:
        val = row["val_accuracy"]
        cells = [str(row["rank"]), str(row["trial"]), row["state"],
                 f"{100 * val:.2f}%" if val is not None else "-",
                 str(row["epochs_run"] or "-"),
                 f"{row['seconds']:.1f}s" if row["seconds"] is not None else "-"]
        for n in names:
            v = row[n]
            cells.append(f"{v:.3g}" if isinstance(v, float) else ("-" if v is None else str(v)))
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
                     for line in lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def config_toml(cfg: TrainConfig, header: list[str]) -> str:
    """A TrainConfig as a TOML file `digitlab train --config` reads back to the same config."""
    data = cfg.to_dict()
    args = data.pop("model_args")
    lines = [f"# {line}" for line in header]
    for key in sorted(data):
        if data[key] is not None and not isinstance(data[key], dict):
            lines.append(f"{key} = {_toml_value(data[key])}")
    lines.append("")
    lines.append("[model_args]")
    lines += [f"{k} = {_toml_value(v)}" for k, v in sorted(args.items()) if v is not None]
    return "\n".join(lines) + "\n"


def best_config(study: Any, space: Space, base: TrainConfig) -> TrainConfig:
    """The winning trial's config, for the whole training set (no validation hold-out)."""
    best = study.best_trial
    values = {}
    for param in space.params:
        label = best.params[param.name]
        if param.type == "categorical":
            labels = [_label(c) for c in param.choices]
            values[param.name] = param.choices[labels.index(label)]
        else:
            values[param.name] = label
    cfg = trial_config(base, values)
    cfg.val_split = 0
    return cfg


def write_plots(study: Any, study_dir: Path) -> tuple[dict[str, Path], list[str]]:
    """Optimisation history and parameter importances as PNG. A plot that cannot be drawn
    (too few trials, a missing library) becomes a note, never an error."""
    from optuna.trial import TrialState

    outputs: dict[str, Path] = {}
    notes: list[str] = []
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from optuna.visualization.matplotlib import (
            plot_optimization_history,
            plot_param_importances,
        )
    except ImportError as exc:
        return outputs, [f"no plots: matplotlib is missing ({exc})"]
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))

    def save(ax: Any, path: Path) -> None:
        fig = ax.figure
        fig.set_size_inches(8, 5)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        plt.close(fig)
        atomic_write(path, buffer.getvalue())

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if complete:
            save(plot_optimization_history(study, target_name="validation accuracy"),
                 study_dir / "history.png")
            outputs["history"] = study_dir / "history.png"
        else:
            notes.append("no optimisation history plot: no trial has completed")
        if len(complete) < 2:
            notes.append("no importance plot: it needs at least 2 completed trials")
            return outputs, notes
        evaluator, how = _importance_evaluator()
        try:
            save(plot_param_importances(study, evaluator=evaluator,
                                        target_name="validation accuracy"),
                 study_dir / "importance.png")
            outputs["importance"] = study_dir / "importance.png"
            if how != "fANOVA":
                notes.append(f"parameter importances by {how} (scikit-learn is not installed, "
                             "so not fANOVA)")
        except Exception as exc:  # importance estimators fail on degenerate studies
            notes.append(f"no importance plot: {type(exc).__name__}: {exc}")
        finally:
            plt.close("all")
    return outputs, notes


def _importance_evaluator() -> tuple[Any, str]:
    from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator

    try:
        import sklearn  # noqa: F401
    except ImportError:
        return PedAnovaImportanceEvaluator(), "PED-ANOVA"
    return FanovaImportanceEvaluator(seed=0), "fANOVA"


def _report(study: Any, result: SweepResult, base: TrainConfig, space: Space,
            console: Console, *, root: Path | None, final: str, fit: Callable) -> None:
    from optuna.trial import TrialState

    study_dir = result.study_dir
    rows = write_table(study, space, study_dir / "trials.csv")
    result.outputs["table"] = study_dir / "trials.csv"
    names = [p.name for p in space.params]
    if rows:
        console.result(format_table(rows, names))
    plots, notes = write_plots(study, study_dir)
    result.outputs.update(plots)
    result.notes += notes
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        result.notes.append("no completed trial yet: no best config")
        _finish_notes(result, console)
        return
    best = study.best_trial
    result.best_trial, result.best_value = best.number, best.value
    result.best_params = dict(best.params)
    cfg = best_config(study, space, base)
    if not result.interrupted and final != "none":
        from digitlab.engine.train import Interrupted

        try:
            result.test_accuracy = _final_test(best, cfg, study_dir, root=root, final=final,
                                               fit=fit, notes=result.notes)
            result.final = final
        except Interrupted as exc:
            result.interrupted = True
            result.notes.append(f"the winner's {final} was {exc}")
    header = [f"digitlab sweep: best of study {result.study_name!r}, trial #{best.number}, "
              f"validation accuracy {100 * best.value:.2f}% "
              f"(on {base.val_split} held-out training images)"]
    if result.test_accuracy is not None:
        header.append(f"test accuracy {100 * result.test_accuracy:.2f}% ({result.final}"
                      + (", trained on the whole training set with this file" if
                         result.final == "refit" else ", the trial's own weights") + ")")
    header.append("train with: digitlab train --config best.toml")
    atomic_write(study_dir / "best.toml", config_toml(cfg, header).encode())
    result.outputs["best_config"] = study_dir / "best.toml"
    summary = {"study": result.study_name, "trial": best.number,
               "val_accuracy": best.value, "params": result.best_params,
               "test_accuracy": result.test_accuracy, "final": result.final,
               "finished_trials": result.finished}
    atomic_write(study_dir / "best.json",
                 (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode())
    result.outputs["best_json"] = study_dir / "best.json"
    _finish_notes(result, console)


def _final_test(best: Any, cfg: TrainConfig, study_dir: Path, *, root: Path | None,
                final: str, fit: Callable, notes: list[str]) -> float:
    """The test set's one use: the winner's accuracy."""
    from digitlab.engine.evaluate import evaluate_run

    if final == "evaluate":
        run = Path(best.user_attrs.get("run_dir", ""))
        if run.is_dir():
            return evaluate_run(run, root=root, device=cfg.device).accuracy
        notes.append(f"trial #{best.number}'s weights are not on this machine ({run}); "
                     "refitting instead")
    fitted = fit(cfg, out=study_dir / "best", force=True, root=root, console=_TrialConsole())
    return fitted.final.accuracy


def _finish_notes(result: SweepResult, console: Console) -> None:
    for note in result.notes:
        console.note(f"note: {note}")


def summary_lines(result: SweepResult) -> list[str]:
    lines = [f"study {result.study_name!r}: {result.finished} finished trials "
             f"({result.ran_here} run by this process), storage {result.storage}"]
    if result.best_trial is not None and result.best_value is not None:
        lines.append(f"best trial #{result.best_trial}: validation accuracy "
                     f"{100 * result.best_value:.2f}%  {_short(result.best_params)}")
    if result.test_accuracy is not None:
        lines.append(f"test accuracy of the winner ({result.final}): "
                     f"{100 * result.test_accuracy:.2f}%")
    for key, path in result.outputs.items():
        lines.append(f"{key.replace('_', ' ')}: {path}")
    if result.interrupted:
        lines.append("interrupted: finished trials are kept; run the same command again to "
                     "continue the study")
    return lines
