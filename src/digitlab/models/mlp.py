"""Multi-layer perceptrons. The defaults are the tutorial's network, layer for layer."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from digitlab.models.registry import register_model

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sigmoid": torch.sigmoid,
    "relu": torch.relu,
    "tanh": torch.tanh,
    "gelu": F.gelu,
    "silu": F.silu,
}


class MLP(nn.Module):
    """Fully connected layers named hidden1..hiddenN and out, as in the tutorial's class, so
    `print(model)` reads the same. The activation is applied functionally, as there."""

    def __init__(
        self,
        hidden: Sequence[int] = (128, 256, 128, 64),
        activation: str = "sigmoid",
        dropout: float = 0.0,
        in_features: int = 28 * 28,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}"
            )
        if not hidden or any(int(h) < 1 for h in hidden):
            raise ValueError(f"hidden sizes must be positive integers, got {list(hidden)}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.activation = activation
        self.act = ACTIVATIONS[activation]
        self.flatten = nn.Flatten()
        sizes = [in_features, *(int(h) for h in hidden)]
        self.hidden_names = [f"hidden{i + 1}" for i in range(len(hidden))]
        for name, fan_in, fan_out in zip(self.hidden_names, sizes[:-1], sizes[1:], strict=True):
            setattr(self, name, nn.Linear(fan_in, fan_out))
        self.out = nn.Linear(sizes[-1], num_classes)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None

    @property
    def hand_written_step(self) -> bool:
        """Capability: engine/steps.MLPStep may compute this network's gradients by hand
        (plain linear layers and an activation; dropout needs autograd's masks)."""
        return self.dropout is None

    @property
    def linears(self) -> list[nn.Linear]:
        return [getattr(self, n) for n in self.hidden_names] + [self.out]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(x)  # [B, 1, 28, 28] -> [B, 784]
        for name in self.hidden_names:
            x = self.act(getattr(self, name)(x))
            if self.dropout is not None:
                x = self.dropout(x)
        return self.out(x)  # [B, num_classes] logits


register_model("mlp", "fully connected; defaults: the tutorial's 784-128-256-128-64-10 "
               "sigmoid")(MLP)
