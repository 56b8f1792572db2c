"""`digitlab report RUN...`: the loss and accuracy curves of several runs overlaid, with a
table of their final figures, as one self-contained HTML page (or just the PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from digitlab.errors import RunDirError
from digitlab.files import atomic_write
from digitlab.report import html, plots


def compare_runs(runs: list[Path], *, out: Path) -> Path:
    """Write the comparison to out: a PNG when out ends in .png, else an HTML page."""
    from digitlab.engine.rundir import CONFIG, read_json, read_metrics

    curves: list[tuple[str, list[dict[str, Any]]]] = []
    rows: list[tuple[object, ...]] = []
    for run in runs:
        if not run.is_dir():
            raise RunDirError(f"{run}: not a run directory (report needs its metrics.jsonl)")
        metrics = read_metrics(run)
        if not metrics:
            raise RunDirError(f"{run}: metrics.jsonl is missing or empty; did training start?")
        config = read_json(run / CONFIG) if (run / CONFIG).exists() else {}
        name = _unique(run.name, [c[0] for c in curves])
        curves.append((name, metrics))
        last = metrics[-1]
        best = max(metrics, key=lambda r: r.get("test_accuracy", 0.0))
        rows.append((name, config.get("model", "?"), config.get("preset", "?"),
                     f"{config.get('parameters', 0):,}", len(metrics),
                     f"{100 * last.get('test_accuracy', 0.0):.2f}%",
                     f"{100 * best.get('test_accuracy', 0.0):.2f}% (epoch {best['epoch']})",
                     f"{last.get('test_loss', float('nan')):.4f}",
                     f"{sum(r.get('seconds', 0.0) for r in metrics):.1f}"))
    png = plots.curves_png(curves)
    if out.suffix.lower() == ".png":
        atomic_write(out, png)
        return out
    table = html.table(["run", "model", "preset", "parameters", "epochs", "final accuracy",
                        "best accuracy", "final test loss", "training seconds"], rows)
    page = html.page("digitlab: run comparison",
                     [("Curves", html.image(png, "loss and accuracy curves")),
                      ("Runs", table)])
    atomic_write(out, page.encode())
    return out


def _unique(name: str, taken: list[str]) -> str:
    # Two runs/*/ directories of the same name from different parents still need two labels.
    candidate, n = name, 2
    while candidate in taken:
        candidate, n = f"{name} ({n})", n + 1
    return candidate
