"""Mixed precision: autocast around the forward pass, and for float16 a dynamic loss scale.

The step functions in steps.py compute the loss and call backward themselves, so the loss
scale is applied where the logits leave the model: a function that is the identity forward
and multiplies the gradient by the scale backward. Every parameter's gradient comes out
multiplied by the scale, exactly as if the loss had been.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from digitlab.errors import DigitlabError

MODES = ("none", "auto", "bf16", "fp16")


class _ScaleGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(scale)
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (scale,) = ctx.saved_tensors
        return grad * scale, None


class _Autocast(nn.Module):
    """Runs the wrapped model under autocast; hands back float32 logits."""

    def __init__(self, inner: nn.Module, precision: Precision) -> None:
        super().__init__()
        self.inner = inner
        self.precision = precision

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.precision.autocast():
            logits = self.inner(x)
        logits = logits.float()
        if self.precision.scale is not None and torch.is_grad_enabled():
            logits = _ScaleGradient.apply(logits, self.precision.scale)
        return logits


class Precision:
    GROWTH_INTERVAL = 2000

    def __init__(self, mode: str, device: torch.device) -> None:
        if mode not in MODES:
            raise DigitlabError(f"--amp must be one of {', '.join(MODES)}, got {mode!r}")
        if mode == "auto":
            # On a CPU without native bf16 (AVX2) autocast only adds conversions.
            mode = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else \
                "fp16" if device.type == "cuda" else "none"
        self.mode = mode
        self.device = device
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mode)
        self.scale = (torch.full((), 2.0**16, device=device) if mode == "fp16" else None)
        self.good_steps = 0
        self.skipped = 0

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def wrap(self, module: nn.Module) -> nn.Module:
        return module if self.dtype is None else _Autocast(module, self)

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """optimizer.step(), after unscaling float16 gradients; a step whose gradients
        overflowed is skipped and the scale halved. Returns whether the step was taken."""
        if self.scale is None:
            optimizer.step()
            return True
        grads = [p.grad for group in optimizer.param_groups for p in group["params"]
                 if p.grad is not None]
        found_inf = torch.zeros(1, device=self.scale.device)
        torch._amp_foreach_non_finite_check_and_unscale_(grads, found_inf,
                                                         self.scale.reciprocal())
        if found_inf.item():
            self.scale.mul_(0.5)
            self.good_steps = 0
            self.skipped += 1
            return False
        optimizer.step()
        self.good_steps += 1
        if self.good_steps % self.GROWTH_INTERVAL == 0:
            self.scale.mul_(2.0)
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "scale": None if self.scale is None else self.scale.item(),
                "good_steps": self.good_steps, "skipped": self.skipped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scale is not None and state.get("scale") is not None:
            self.scale.fill_(state["scale"])
        self.good_steps = int(state.get("good_steps", 0))
        self.skipped = int(state.get("skipped", 0))
