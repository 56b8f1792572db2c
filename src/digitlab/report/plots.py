"""Report figures as PNG bytes. Figures are built with matplotlib's object API on the Agg
canvas (no pyplot): no display is needed and no global figure state leaks between calls,
which matters inside the HTTP server's threads."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()


def confusion_png(matrix: np.ndarray, classes: Sequence[str]) -> bytes:
    """Counts on a log-ish colour scale: the diagonal dwarfs the mistakes otherwise."""
    n = len(classes)
    fig = Figure(figsize=(1.0 + 0.6 * n, 0.6 + 0.6 * n))
    ax = fig.add_subplot()
    shown = np.log1p(matrix.astype(np.float64))
    ax.imshow(shown, cmap="Blues")
    top = shown.max() or 1.0
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=8,
                    color="white" if shown[i, j] > 0.6 * top else "black")
    ax.set_xticks(range(n), list(classes))
    ax.set_yticks(range(n), list(classes))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (test set)")
    fig.tight_layout()
    return _png(fig)


def misclassified_png(images: np.ndarray, true: Sequence[int], predicted: Sequence[int],
                      probability: Sequence[float], classes: Sequence[str],
                      *, columns: int = 10) -> bytes:
    """A grid of images (uint8 [N, 28, 28]) captioned 'true -> predicted (probability)'.

    One mosaic image on one axes: a hundred subplots take matplotlib many seconds."""
    count = len(images)
    rows = max(1, -(-count // columns))
    side = images.shape[-1] if count else 28
    cap, gap = side // 2, 2  # caption band above each tile, gap between tiles
    cell_h, cell_w = side + cap + gap, side + gap
    mosaic = np.full((rows * cell_h, columns * cell_w), 255, dtype=np.uint8)
    fig = Figure(figsize=(columns * 0.9, rows * 0.9 * cell_h / cell_w + 0.4))
    ax = fig.add_axes((0, 0, 1, 0.96 if count else 1))
    for k in range(count):
        r, c = divmod(k, columns)
        top, left = r * cell_h + cap, c * cell_w
        mosaic[top : top + side, left : left + side] = images[k]
    ax.imshow(mosaic, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    for k in range(count):
        r, c = divmod(k, columns)
        ax.text(c * cell_w + side / 2, r * cell_h + cap - 2,
                f"{classes[true[k]]}→{classes[predicted[k]]} {100 * probability[k]:.0f}%",
                ha="center", va="bottom", fontsize=7)
    if count == 0:
        ax.text(columns * cell_w / 2, cell_h / 2, "no misclassified images", ha="center",
                va="center")
    ax.axis("off")
    fig.suptitle("Misclassified: true → predicted (probability of the prediction)",
                 fontsize=9, y=0.995)
    return _png(fig)


def curves_png(runs: Sequence[tuple[str, list[dict[str, Any]]]]) -> bytes:
    """Loss and accuracy per epoch from metrics.jsonl rows; one colour per run, solid for
    test and dashed for training (loss) or validation (accuracy)."""
    fig = Figure(figsize=(11, 4))
    loss_ax, acc_ax = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for index, (name, rows) in enumerate(runs):
        colour = f"C{index % 10}"
        epochs = [r["epoch"] for r in rows]
        label = name if len(runs) > 1 else ""
        for ax, key, style, what in ((loss_ax, "train_loss", "--", "train"),
                                     (loss_ax, "test_loss", "-", "test"),
                                     (acc_ax, "val_accuracy", "--", "validation"),
                                     (acc_ax, "test_accuracy", "-", "test")):
            points = [(e, r[key]) for e, r in zip(epochs, rows, strict=True) if key in r]
            if not points:
                continue
            xs, ys = zip(*points, strict=True)
            if key.endswith("accuracy"):
                ys = tuple(100 * y for y in ys)
            ax.plot(xs, ys, style, color=colour, marker="o", markersize=3,
                    label=f"{label} {what}".strip())
    loss_ax.set(title="Loss", xlabel="epoch", ylabel="loss")
    acc_ax.set(title="Accuracy", xlabel="epoch", ylabel="accuracy (%)")
    for ax in (loss_ax, acc_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)
