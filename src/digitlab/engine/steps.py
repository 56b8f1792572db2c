"""One optimisation step's forward and backward.

`AutogradStep` serves every model. `MLPStep` is the same computation for the MLP family done
by hand: a sigmoid/ReLU/tanh MLP's backward pass is a handful of matrix products, and
skipping autograd's graph plus keeping every parameter in one flat buffer (one optimizer
kernel instead of one per tensor) is what makes the tutorial's 938 small batches an epoch
cheap. Both produce the same gradients (tests/test_steps.py checks it against autograd).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from digitlab.models.mlp import MLP


def soft_targets(y: torch.Tensor, classes: int, label_smoothing: float,
                 dtype: torch.dtype) -> torch.Tensor:
    """[B, classes] target probabilities: one-hot, smoothed; a label < 0 (a non-digit, see
    data/outliers.py) gets the uniform distribution."""
    target = F.one_hot(y.clamp(min=0), classes).to(dtype)
    if label_smoothing:
        target.mul_(1 - label_smoothing).add_(label_smoothing / classes)
    return torch.where((y < 0).unsqueeze(1), torch.full_like(target, 1.0 / classes), target)


class AutogradStep:
    def __init__(self, model: nn.Module, label_smoothing: float = 0.0,
                 outliers: bool = False,
                 scale_loss: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.model = model
        self.label_smoothing = label_smoothing
        self.outliers = outliers  # batches may hold non-digits, labelled < 0
        self.scale_loss = scale_loss  # mixed precision's loss scale (Precision.scale_loss)

    def parameters(self) -> list[nn.Parameter]:
        return list(self.model.parameters())

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Set .grad of every parameter for this batch; return the batch's mean loss."""
        for p in self.model.parameters():
            p.grad = None
        logits = self.model(x)
        if self.outliers:
            target = soft_targets(y, logits.shape[1], self.label_smoothing, torch.float32)
            loss = F.cross_entropy(logits.float(), target)
        else:
            loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        (loss if self.scale_loss is None else self.scale_loss(loss)).backward()
        return loss.detach()


# Each activation's derivative, written in terms of its output a = act(z).
_DERIVATIVE_FROM_OUTPUT = {
    "sigmoid": lambda a: a * (1 - a),
    "tanh": lambda a: 1 - a * a,
    "relu": lambda a: (a > 0).to(a.dtype),
}


class MLPStep:
    """Hand-written backward pass for `MLP` with an activation whose derivative follows from
    its output, and no dropout. Parameters become views into one flat tensor."""

    @staticmethod
    def supports(model: nn.Module) -> bool:
        """Whether the model declares itself a plain MLP this step computes exactly (the
        `hand_written_step` capability of models/mlp.py), with an activation it knows."""
        return (bool(getattr(model, "hand_written_step", False))
                and getattr(model, "activation", None) in _DERIVATIVE_FROM_OUTPUT)

    def __init__(self, model: MLP, label_smoothing: float = 0.0) -> None:
        self.model = model
        self.label_smoothing = label_smoothing
        self.derivative = _DERIVATIVE_FROM_OUTPUT[model.activation]
        params = list(model.parameters())
        total = sum(p.numel() for p in params)
        ref = params[0]
        self.flat = nn.Parameter(torch.empty(total, dtype=ref.dtype, device=ref.device))
        self.flat.grad = torch.zeros_like(self.flat)
        offset = 0
        for p in params:
            n = p.numel()
            self.flat.data[offset : offset + n].copy_(p.data.reshape(-1))
            p.data = self.flat.data[offset : offset + n].view_as(p)
            p.grad = self.flat.grad[offset : offset + n].view_as(p)
            offset += n
        self.layers = model.linears
        grads = [p.grad for p in params]  # views into flat.grad, set above
        self.weight_grads: list[torch.Tensor] = [g for g in grads[0::2] if g is not None]
        self.bias_grads: list[torch.Tensor] = [g for g in grads[1::2] if g is not None]
        # A weight gradient computed as h.T @ g lands as [in, out]; MKL is much faster at
        # that shape for the 784-wide first layer than at g.T @ h, so compute there and copy.
        self.scratch = [torch.empty_like(layer.weight.t()) for layer in self.layers]

    def parameters(self) -> list[nn.Parameter]:
        return [self.flat]

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = x.reshape(x.shape[0], -1)  # [B, 784]
        acts = [h]
        for layer in self.layers[:-1]:
            h = self.model.act(torch.addmm(layer.bias, h, layer.weight.t()))
            acts.append(h)
        out = self.layers[-1]
        logits = torch.addmm(out.bias, h, out.weight.t())  # [B, C]
        logp = torch.log_softmax(logits, dim=1)
        target = soft_targets(y, logits.shape[1], self.label_smoothing, logits.dtype)
        loss = -(logp * target).sum() / x.shape[0]
        g = logp.exp_().sub_(target).div_(x.shape[0])  # dLoss/dlogits, [B, C]
        for k in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[k]
            torch.mm(acts[k].t(), g, out=self.scratch[k])
            self.weight_grads[k].copy_(self.scratch[k].t())
            torch.sum(g, dim=0, out=self.bias_grads[k])
            if k > 0:
                g = torch.mm(g, layer.weight).mul_(self.derivative(acts[k]))
        return loss


def make_step(model: nn.Module, label_smoothing: float = 0.0, outliers: bool = False,
              scale_loss: Callable[[torch.Tensor], torch.Tensor] | None = None
              ) -> AutogradStep | MLPStep:
    """outliers: batches may hold non-digits labelled < 0, taught a uniform target (the MLP
    step always handles them). scale_loss: mixed precision's loss scale, which only the
    autograd step needs (a wrapped, autocast model is never an MLP's hand-written case)."""
    if scale_loss is None and MLPStep.supports(model):
        return MLPStep(model, label_smoothing)  # type: ignore[arg-type]
    return AutogradStep(model, label_smoothing, outliers, scale_loss)
