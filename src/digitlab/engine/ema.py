"""Exponential moving average of a model's weights, evaluated and saved in place of the raw
weights: late in training the average sits nearer the minimum than any single step does."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import get_ema_multi_avg_fn


class EMA:
    """shadow = decay * shadow + (1 - decay) * weights after every optimizer step. The decay
    ramps up as (1 + n) / (10 + n) so a short run is not dominated by its random start.
    Buffers (batch-norm statistics) are copied, not averaged: they are averages already."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self._pairs = self._match(model)

    def _match(self, model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor],
                                                 list[torch.Tensor], list[torch.Tensor]]:
        shadow_p: list[torch.Tensor] = list(self.module.parameters())
        model_p = [p.detach() for p in model.parameters()]
        shadow_b = [b for b in self.module.buffers()]
        model_b = [b for b in model.buffers()]
        return shadow_p, model_p, shadow_b, model_b

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        shadow_p, model_p, shadow_b, model_b = self._pairs
        # torch's own EMA update (one fused pass over all tensors), with this step's decay.
        get_ema_multi_avg_fn(self.current_decay())(shadow_p, model_p, None)
        for s, b in zip(shadow_b, model_b, strict=True):
            s.copy_(b)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates,
                "module": {k: v.detach().clone() for k, v in self.module.state_dict().items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay = float(state["decay"])
        self.updates = int(state["updates"])
        self.module.load_state_dict(state["module"])
