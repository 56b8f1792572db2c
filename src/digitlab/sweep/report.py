"""What a sweep leaves: the ranked table, the best config as TOML, plots, the winner's
test accuracy and the summary."""

from __future__ import annotations

import csv
import io
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from digitlab.config import TrainConfig
from digitlab.console import Console
from digitlab.files import atomic_write
from digitlab.sweep.space import Space, best_config


class TrialConsole(Console):
    """Trials train silently; the sweep prints one line per trial instead."""

    def __init__(self) -> None:
        super().__init__(quiet=True, progress=False)

    def result(self, text: str) -> None:
        pass


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


def short(params: dict[str, Any]) -> str:
    parts = []
    for name, value in params.items():
        key = name.split(".", 1)[-1]
        text = f"{value:.3g}" if isinstance(value, float) else str(value)
        parts.append(f"{key}={text}")
    return " ".join(parts)


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


def config_toml(cfg: TrainConfig, header: list[str]) -> str:
    """A TrainConfig as a TOML file `digitlab train --config` reads back to the same config."""
    import tomli_w

    data = cfg.to_dict()
    args = data.pop("model_args")
    # TOML has no null: a setting left unset is left out, and read back as its default.
    table = {k: v for k, v in sorted(data.items()) if v is not None and not isinstance(v, dict)}
    table["model_args"] = {k: v for k, v in sorted(args.items()) if v is not None}
    return "".join(f"# {line}\n" for line in header) + tomli_w.dumps(table)


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


def write_report(study: Any, result: SweepResult, base: TrainConfig, space: Space,
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
    fitted = fit(cfg, out=study_dir / "best", force=True, root=root, console=TrialConsole())
    return fitted.final.accuracy


def _finish_notes(result: SweepResult, console: Console) -> None:
    for note in result.notes:
        console.note(f"note: {note}")
