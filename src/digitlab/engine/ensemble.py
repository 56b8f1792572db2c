"""Several trained models (and optionally several views of each image) voting by the mean of
their predicted probabilities."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from digitlab.backends.torch import probabilities
from digitlab.data.augment import background_value, warp
from digitlab.data.loader import DeviceData, batches
from digitlab.engine.evaluate import EvalResult, evaluate
from digitlab.errors import DigitlabError

# Test-time views: the image itself and small shifts a writer's hand could have made.
TTA_VIEWS: tuple[dict[str, Any], ...] = (
    {},
    {"translate": (1.0, 0.0)},
    {"translate": (-1.0, 0.0)},
    {"translate": (0.0, 1.0)},
    {"translate": (0.0, -1.0)},
)


@dataclass
class Member:
    run: Path
    result: EvalResult


@dataclass
class EnsembleResult:
    members: list[Member]
    ensemble: EvalResult
    tta: bool


def from_probabilities(probs: torch.Tensor, labels: torch.Tensor) -> EvalResult:
    """Accuracy, mean negative log-likelihood and per-class accuracy of [N, C] probabilities."""
    labels = labels.to(probs.device)
    classes = probs.shape[1]
    pred = probs.argmax(dim=1)
    hit = (pred == labels).float()
    nll = -probs.gather(1, labels[:, None]).clamp_min(1e-12).log()
    totals = torch.bincount(labels, minlength=classes).clamp_min(1)
    per_class = torch.zeros(classes).index_add_(0, labels, hit) / totals
    return EvalResult(accuracy=hit.mean().item(), loss=nll.mean().item(),
                      per_class=per_class.tolist(), count=len(labels), probabilities=probs)


@torch.no_grad()
def tta_probabilities(model: nn.Module, data: DeviceData, *, background: float,
                      batch_size: int = 1000) -> torch.Tensor:
    """[N, C] mean of the model's probabilities over TTA_VIEWS, on the CPU."""
    model.eval()
    out = []
    for x, _ in batches(data, batch_size):
        views = [probabilities(model(warp(x, background=background, **view)))
                 for view in TTA_VIEWS]
        out.append(torch.stack(views).mean(dim=0).cpu())
    return torch.cat(out)


def evaluate_ensemble(runs: list[Path], *, root: Path | None = None, device: str = "auto",
                      tta: bool = False, batch_size: int = 1000) -> EnsembleResult:
    """Each run's result on the test set and that of the mean of their probabilities."""
    from digitlab.data.loader import load_test_set
    from digitlab.device import resolve_device
    from digitlab.engine.rundir import load_model

    if not runs:
        raise DigitlabError("name at least one run to evaluate")
    dev = resolve_device(device)
    tests: dict[tuple[str, str], DeviceData] = {}
    members: list[Member] = []
    dataset = None
    total: torch.Tensor | None = None
    for run in runs:
        model, meta = load_model(run, dev)
        name, normalize = meta.get("dataset", "mnist"), meta.get("normalize", "unit")
        if dataset is not None and name != dataset:
            raise DigitlabError(f"{run} was trained on {name}, the others on {dataset}: "
                                "an ensemble needs one dataset")
        dataset = name
        if (name, normalize) not in tests:
            tests[name, normalize] = load_test_set(name, root, dev, normalize)
        test = tests[name, normalize]
        if tta:
            probs = tta_probabilities(model, test, background=background_value(normalize),
                                      batch_size=batch_size)
            result = from_probabilities(probs, test.y.cpu())
        else:
            result = evaluate(model, test, batch_size=batch_size, keep_probabilities=True)
        assert result.probabilities is not None
        total = result.probabilities if total is None else total + result.probabilities
        members.append(Member(run, result))
    assert total is not None
    labels = next(iter(tests.values())).y.cpu()
    return EnsembleResult(members, from_probabilities(total / len(runs), labels), tta)
