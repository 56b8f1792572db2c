"""The test pass: accuracy, average loss and per-class accuracy, as pytorch/examples does it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from digitlab.backends.torch import probabilities
from digitlab.data.loader import DeviceData, batches


@dataclass
class EvalResult:
    accuracy: float  # fraction in [0, 1]
    loss: float
    per_class: list[float]  # accuracy of each true class
    count: int
    probabilities: torch.Tensor | None = field(default=None, repr=False)  # [N, C] on CPU

    def summary(self) -> str:
        return f"Test result: Accuracy: {100 * self.accuracy:.2f}%, Avg loss: {self.loss:.6f}"


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: DeviceData,
    *,
    batch_size: int = 1000,
    loss_average: str = "sample",
    keep_probabilities: bool = False,
) -> EvalResult:
    """loss_average "batch" is the tutorial's mean of per-batch mean losses; "sample" is
    the summed loss divided by N."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=data.y.device)
    correct = torch.zeros((), dtype=torch.int64, device=data.y.device)
    num_classes = 0
    preds, probs = [], []
    n_batches = 0
    for x, y in batches(data, batch_size):
        logits = model(x).float()
        num_classes = logits.shape[1]
        if loss_average == "batch":
            loss_sum += F.cross_entropy(logits, y)
        else:
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
        pred = logits.argmax(dim=1)
        correct += (pred == y).sum()
        preds.append(pred)
        if keep_probabilities:
            probs.append(probabilities(logits).cpu())
        n_batches += 1
    model.train(was_training)
    n = len(data)
    pred_all = torch.cat(preds)
    hits = torch.zeros(num_classes, device=pred_all.device).index_add_(
        0, data.y, (pred_all == data.y).float()
    )
    totals = torch.bincount(data.y, minlength=num_classes).clamp_min(1)
    return EvalResult(
        accuracy=correct.item() / n,
        loss=loss_sum.item() / (n_batches if loss_average == "batch" else n),
        per_class=(hits / totals).tolist(),
        count=n,
        probabilities=torch.cat(probs) if keep_probabilities else None,
    )


def evaluate_run(run: Path, *, root: Path | None = None, device: str = "auto",
                 batch_size: int = 1000, keep_probabilities: bool = False) -> EvalResult:
    """Evaluate a run directory (or weights file) on its dataset's test split."""
    from digitlab.data.loader import load_test_set
    from digitlab.device import resolve_device
    from digitlab.engine.rundir import load_model

    dev = resolve_device(device)
    model, meta = load_model(run, dev)
    test = load_test_set(meta.get("dataset", "mnist"), root, dev, meta.get("normalize", "unit"))
    return evaluate(model, test, batch_size=batch_size, keep_probabilities=keep_probabilities)
