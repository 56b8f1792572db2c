"""How a model's input is scaled: the normalisations a run may use, defined once.

Every normalisation first divides uint8 pixels by 255 (torchvision's ToTensor), then
subtracts a mean and divides by a standard deviation. data/loader.py applies it to
tensors for training, an exported file carries the numbers in its contract
(backends/onnx.py), and onnxruntime's path applies them with NumPy. No torch here: the
core install runs models without it.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from digitlab.errors import DigitlabError

__all__ = ["MNIST_MEAN", "MNIST_STD", "NORMALISATIONS", "Normalize", "from_unit", "mean_std",
           "to_unit"]

# MNIST's training-set pixel statistics on the [0, 1] scale.
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
# "unit": x / 255 alone (the tutorial); "standard": then (x - MNIST_MEAN) / MNIST_STD.
Normalize = Literal["unit", "standard"]
NORMALISATIONS: tuple[str, ...] = get_args(Normalize)


def mean_std(mode: str) -> tuple[float, float]:
    """The (mean, std) that `mode` subtracts and divides by after x / 255."""
    if mode not in NORMALISATIONS:
        raise DigitlabError(f"unknown normalisation {mode!r}")
    return (MNIST_MEAN, MNIST_STD) if mode == "standard" else (0.0, 1.0)


def to_unit(x: Any, mode: str) -> Any:
    """Normalised images (a NumPy array or a torch tensor) back on the [0, 1] scale; x
    itself where `mode` changes nothing."""
    mean, std = mean_std(mode)
    return x if (mean, std) == (0.0, 1.0) else x * std + mean


def from_unit(x: Any, mode: str) -> Any:
    """Images on the [0, 1] scale normalised as `mode` says (x itself for "unit")."""
    mean, std = mean_std(mode)
    return x if (mean, std) == (0.0, 1.0) else (x - mean) / std
