"""`digitlab evaluate RUN --report DIR`: the test-set evaluation of one run written out as
PNG figures, a CSV of per-class scores and one self-contained HTML page showing them all."""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from pathlib import Path

import numpy as np

from digitlab.engine.evaluate import EvalResult
from digitlab.files import atomic_write
from digitlab.report import html, plots
from digitlab.report.scores import (
    ClassScores,
    class_scores,
    confusion_matrix,
    scores_csv,
)

MAX_MISCLASSIFIED = 100  # shown in the grid, most confident mistakes first

CONFUSION = "confusion_matrix.png"
MISCLASSIFIED = "misclassified.png"
CURVES = "curves.png"
SCORES = "per_class.csv"
PAGE = "report.html"
_KEYS = {CONFUSION: "confusion", MISCLASSIFIED: "misclassified", CURVES: "curves"}


@dataclass
class EvaluationReport:
    result: EvalResult
    scores: list[ClassScores]
    files: dict[str, Path]  # what was written: confusion, misclassified, curves, scores, page


def write_evaluation_report(run: Path, out: Path, *, root: Path | None = None,
                            device: str = "auto") -> EvaluationReport:
    """Evaluate run on its test split and write the report files into the directory out."""
    from digitlab.data import sources
    from digitlab.data.loader import load_split
    from digitlab.engine.evaluate import evaluate_run
    from digitlab.engine.rundir import read_metrics, read_weights

    result = evaluate_run(run, root=root, device=device, keep_probabilities=True)
    _, meta = read_weights(run)
    dataset = meta.get("dataset", "mnist")
    test = load_split(dataset, root if root is not None else sources.default_root(), "test")
    classes = [str(c) for c in meta.get("classes", sources.get_spec(dataset).classes)]
    assert result.probabilities is not None
    probs = result.probabilities.numpy()
    predicted = probs.argmax(axis=1)
    labels = test.labels.astype(np.int64)
    matrix = confusion_matrix(labels, predicted, len(classes))
    scores = class_scores(matrix, classes)

    wrong = np.flatnonzero(predicted != labels)
    wrong = wrong[np.argsort(-probs[wrong, predicted[wrong]], kind="stable")][:MAX_MISCLASSIFIED]
    metrics = read_metrics(run) if run.is_dir() else []
    figures = {
        CONFUSION: plots.confusion_png(matrix, classes),
        MISCLASSIFIED: plots.misclassified_png(
            test.images[wrong], labels[wrong].tolist(), predicted[wrong].tolist(),
            probs[wrong, predicted[wrong]].tolist(), classes),
    }
    if metrics:
        figures[CURVES] = plots.curves_png([(run.name, metrics)])

    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    for name, png in figures.items():
        atomic_write(out / name, png)
        files[_KEYS[name]] = out / name
    atomic_write(out / SCORES, scores_csv(scores).encode())
    files["scores"] = out / SCORES
    page = _page(run, meta, result, scores, figures, misclassified=int((predicted != labels).sum()))
    atomic_write(out / PAGE, page.encode())
    files["page"] = out / PAGE
    return EvaluationReport(result, scores, files)


def _page(run: Path, meta: dict, result: EvalResult, scores: list[ClassScores],
          figures: dict[str, bytes], *, misclassified: int) -> str:
    intro = (
        f"<p>Model <b>{escape(str(meta.get('model')))}</b> on the "
        f"{escape(str(meta.get('dataset', 'mnist')))} test set: accuracy "
        f"<b>{100 * result.accuracy:.2f}%</b>, average loss {result.loss:.4f}, "
        f"{misclassified} of {result.count} images misclassified.</p>"
    )
    score_rows = [(s.label, f"{s.precision:.4f}", f"{s.recall:.4f}", f"{s.f1:.4f}", s.support)
                  for s in scores]
    sections = [
        ("Per-class precision, recall and F1",
         html.table(["class", "precision", "recall", "F1", "support"], score_rows)),
        ("Confusion matrix", html.image(figures[CONFUSION], "confusion matrix")),
        (f"Misclassified images (the {min(misclassified, MAX_MISCLASSIFIED)} most confident "
         "mistakes)", html.image(figures[MISCLASSIFIED], "misclassified test images")),
        ("Training curves",
         html.image(figures[CURVES], "loss and accuracy curves") if CURVES in figures
         else '<p class="muted">No metrics.jsonl: this is a weights file, not a run '
              "directory.</p>"),
    ]
    return html.page(f"digitlab report: {run.name}", sections, intro=intro)
