"""Mixed precision: autocast around the forward pass, and for float16 torch's GradScaler.

The step functions in steps.py call backward themselves, so they take the loss through
`scale_loss` first; `step` then unscales, skips a step whose gradients overflowed and adjusts
the scale, all by `torch.amp.GradScaler`.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from digitlab.choices import AMP_MODES
from digitlab.errors import DigitlabError

MODES = AMP_MODES


class _Autocast(nn.Module):
    """Runs the wrapped model under autocast; hands back float32 logits."""

    def __init__(self, inner: nn.Module, precision: Precision) -> None:
        super().__init__()
        self.inner = inner
        self.precision = precision

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.precision.autocast():
            logits = self.inner(x)
        return logits.float()


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
        self.scaler = (torch.amp.GradScaler(device.type, growth_interval=self.GROWTH_INTERVAL)
                       if mode == "fp16" else None)
        self.skipped = 0

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def wrap(self, module: nn.Module) -> nn.Module:
        return module if self.dtype is None else _Autocast(module, self)

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss to call backward on: multiplied by the loss scale under float16."""
        return loss if self.scaler is None else self.scaler.scale(loss)

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """optimizer.step(), after unscaling float16 gradients; a step whose gradients
        overflowed is skipped and the scale halved. Returns whether the step was taken."""
        if self.scaler is None:
            optimizer.step()
            return True
        before = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        # GradScaler lowers the scale exactly when it skipped the step.
        taken = self.scaler.get_scale() >= before
        self.skipped += not taken
        return taken

    def state_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "skipped": self.skipped,
                "scaler": None if self.scaler is None else self.scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.skipped = int(state.get("skipped", 0))
        if self.scaler is None:
            return
        saved = state.get("scaler")
        if saved is None and state.get("scale") is not None:
            # A checkpoint from before GradScaler: its scale and run of good steps.
            saved = {**self.scaler.state_dict(), "scale": float(state["scale"]),
                     "_growth_tracker": int(state.get("good_steps", 0)) % self.GROWTH_INTERVAL}
        if saved:
            self.scaler.load_state_dict(saved)
