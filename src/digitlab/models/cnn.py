"""Convolutional networks: LeNet-5 for reference, the fastest route to 99%, and the most
accurate single model."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from digitlab.models.registry import register_model

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU}


def _activation(name: str) -> type[nn.Module]:
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]


def _sizes(values: Sequence[int], count: int | None, what: str) -> list[int]:
    sizes = [int(v) for v in values]
    if not sizes or any(v < 1 for v in sizes) or (count is not None and len(sizes) != count):
        need = f"{count} " if count is not None else ""
        raise ValueError(f"{what} must be {need}positive integers, got {list(values)}")
    return sizes


class LeNet5(nn.Module):
    """LeCun et al. 1998: two 5x5 convolutions with subsampling, then 120-84-10."""

    def __init__(self, activation: str = "tanh", pool: str = "avg", num_classes: int = 10
                 ) -> None:
        super().__init__()
        act = _activation(activation)
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        pooling = nn.AvgPool2d if pool == "avg" else nn.MaxPool2d
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2), act(), pooling(2),  # [B, 6, 14, 14]
            nn.Conv2d(6, 16, 5), act(), pooling(2),  # [B, 16, 5, 5]
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * 5 * 5, 120), act(), nn.Linear(120, 84), act(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))  # [B, num_classes]


class FastCNN(nn.Module):
    """Two small convolutions, each followed by 2x2 max-pooling, batch norm and ReLU, then a
    hidden layer. Pooling comes first so normalisation and activation touch a quarter of the
    elements. Lean on purpose: on a CPU the time to 99% is set by arithmetic and memory.

    stem "unshuffle" first folds every 2x2 block of pixels into 4 channels (14x14x4), so
    the first convolution works at a quarter of the positions (a 3x3 kernel there sees 6x6
    pixels at stride 2), and the second one needs no pooling after it."""

    def __init__(self, channels: Sequence[int] = (16, 32), kernels: Sequence[int] = (5, 3),
                 hidden: int = 128, batchnorm: bool = True, dropout: float = 0.0,
                 stem: str = "conv", num_classes: int = 10) -> None:
        super().__init__()
        c1, c2 = _sizes(channels, 2, "channels")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if stem not in ("conv", "unshuffle"):
            raise ValueError(f"stem must be 'conv' or 'unshuffle', got {stem!r}")
        k1, k2 = _sizes(kernels, 2, "kernels")
        unshuffle = stem == "unshuffle"
        side = (14 - k1 + 1) // 2 - k2 + 1 if unshuffle else ((28 - k1 + 1) // 2 - k2 + 1) // 2
        if side < 1:
            raise ValueError(f"kernels {k1}, {k2} leave no pixels of a 28x28 image")

        def block(cin: int, cout: int, k: int, pool: bool = True) -> list[nn.Module]:
            norm: nn.Module = nn.BatchNorm2d(cout) if batchnorm else nn.Identity()
            return [nn.Conv2d(cin, cout, k, bias=not batchnorm),
                    *([nn.MaxPool2d(2)] if pool else []), norm, nn.ReLU()]

        first = [nn.PixelUnshuffle(2), *block(4, c1, k1)] if unshuffle else block(1, c1, k1)
        self.features = nn.Sequential(*first, *block(c1, c2, k2, pool=not unshuffle))
        flat = c2 * side * side
        head: list[nn.Module] = [nn.Flatten()]
        if hidden:
            head += [nn.Linear(flat, hidden), nn.ReLU()]
            flat = hidden
        if dropout:
            head.append(nn.Dropout(dropout))
        head.append(nn.Linear(flat, num_classes))
        self.classifier = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))  # [B, 1, 28, 28] -> [B, num_classes]


# The reference stacks of An et al. (2020), "An Ensemble of Simple Convolutional Neural
# Network Models for MNIST Digit Recognition": 28x28 shrinks by k-1 per layer, no padding.
BEST_CHANNELS = {
    3: (32, 48, 64, 80, 96, 112, 128, 144, 160, 176),  # -> 8x8
    5: (32, 64, 96, 128, 160),  # -> 8x8
    7: (48, 96, 144, 192),  # -> 4x4
}


class BestCNN(nn.Module):
    """Unpadded conv + batch norm + ReLU layers, no pooling, one fully connected layer whose
    logits are batch-normalised too."""

    def __init__(self, kernel: int = 5, channels: Sequence[int] | None = None,
                 dropout: float = 0.0, num_classes: int = 10) -> None:
        super().__init__()
        if channels is None:
            if kernel not in BEST_CHANNELS:
                raise ValueError(f"kernel must be one of {sorted(BEST_CHANNELS)} unless "
                                 f"channels are given, got {kernel}")
            channels = BEST_CHANNELS[kernel]
        sizes = _sizes(channels, None, "channels")
        side = 28 - len(sizes) * (kernel - 1)
        if kernel < 1 or side < 1:
            raise ValueError(f"{len(sizes)} layers of {kernel}x{kernel} leave no pixels of 28x28")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        layers: list[nn.Module] = []
        for cin, cout in zip([1, *sizes[:-1]], sizes, strict=True):
            layers += [nn.Conv2d(cin, cout, kernel, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
        self.features = nn.Sequential(*layers)  # [B, C, side, side]
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout) if dropout else nn.Identity(),
            nn.Linear(sizes[-1] * side * side, num_classes, bias=False),
            nn.BatchNorm1d(num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))  # [B, num_classes]


# Registered from the classes themselves: their signatures are the models' options.
register_model("lenet5", "LeNet-5 (LeCun 1998): conv 6@5x5, pool, conv 16@5x5, pool, "
               "120-84-10")(LeNet5)
register_model("cnn-fast", "lean conv-pool-BN x2 + small MLP head: the quickest route to "
               "99%")(FastCNN)
register_model("cnn-best", "stack of unpadded conv-BN-ReLU (5x5 by default), no pooling: "
               "the most accurate single model")(BestCNN)
