"""Pruning trials that fall behind, compared at the same share of their own schedule."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


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
