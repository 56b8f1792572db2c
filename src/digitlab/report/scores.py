"""Per-class precision, recall and F1 from a confusion matrix, as a table and as CSV."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import numpy as np


@dataclass
class ClassScores:
    label: str
    precision: float
    recall: float
    f1: float
    support: int  # test images of this class


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int
                     ) -> np.ndarray:
    """[true, predicted] counts, int64 [C, C]."""
    flat = labels.astype(np.int64) * num_classes + predictions.astype(np.int64)
    return np.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def class_scores(matrix: np.ndarray, classes: list[str]) -> list[ClassScores]:
    hits = np.diag(matrix).astype(np.float64)
    predicted = matrix.sum(axis=0)
    actual = matrix.sum(axis=1)
    # A class never predicted (or never present) scores 0, not NaN, as scikit-learn does.
    precision = np.divide(hits, predicted, out=np.zeros_like(hits), where=predicted > 0)
    recall = np.divide(hits, actual, out=np.zeros_like(hits), where=actual > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros_like(hits), where=both > 0)
    return [ClassScores(label, float(p), float(r), float(f), int(n))
            for label, p, r, f, n in zip(classes, precision, recall, f1, actual, strict=True)]


def macro_average(scores: list[ClassScores]) -> ClassScores:
    n = len(scores)
    return ClassScores("macro avg", sum(s.precision for s in scores) / n,
                       sum(s.recall for s in scores) / n, sum(s.f1 for s in scores) / n,
                       sum(s.support for s in scores))


def scores_csv(scores: list[ClassScores]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["class", "precision", "recall", "f1", "support"])
    for s in [*scores, macro_average(scores)]:
        writer.writerow([s.label, f"{s.precision:.4f}", f"{s.recall:.4f}", f"{s.f1:.4f}",
                         s.support])
    return out.getvalue()


def scores_table(scores: list[ClassScores]) -> str:
    lines = [f"{'class':<10} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}"]
    for s in [*scores, macro_average(scores)]:
        lines.append(f"{s.label:<10} {s.precision:>9.4f} {s.recall:>9.4f} {s.f1:>9.4f} "
                     f"{s.support:>8}")
    return "\n".join(lines)
