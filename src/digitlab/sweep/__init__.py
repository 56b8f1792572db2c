"""Hyperparameter search with Optuna: what the tutorial asks its reader to do by hand.

Each trial is an ordinary training run (fit()) on the training set minus a held-out
validation part; its per-epoch validation accuracy drives TPE and pruning. The test set is
touched once, for the winner only. Trials live in an Optuna storage (SQLite in the study's
directory by default, so an interrupted sweep resumes; PostgreSQL for many machines).

space: the search space file and each trial's config; pruner: pruning by schedule progress;
storage: where the study lives; run: running the trials; report: what a sweep leaves.
"""

from __future__ import annotations

from digitlab.sweep.pruner import make_pruner
from digitlab.sweep.report import (
    SweepResult,
    config_toml,
    format_table,
    ranked_trials,
    write_plots,
    write_table,
)
from digitlab.sweep.run import FINALS, run_sweep
from digitlab.sweep.space import (
    DEFAULT_SPACE,
    TYPES,
    Param,
    Space,
    SweepError,
    base_config,
    best_config,
    check_space,
    default_space_path,
    load_space,
    trial_config,
)
from digitlab.sweep.storage import driver_url, open_storage, storage_url

__all__ = [
    "DEFAULT_SPACE", "FINALS", "TYPES", "Param", "Space", "SweepError", "SweepResult",
    "base_config", "best_config", "check_space", "config_toml", "default_space_path",
    "driver_url", "format_table", "load_space", "make_pruner", "open_storage",
    "ranked_trials", "run_sweep", "storage_url", "trial_config",
    "write_plots", "write_table",
]
