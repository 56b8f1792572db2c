"""How a model's input is scaled: the normalisations a run may use, defined once.

Every normalisation first divides uint8 pixels by 255 (torchvision's ToTensor), then
subtracts a mean and divides by a standard deviation. data/loader.py applies it to
tensors for training, an exported file carries the numbers in its contract
(backends/onnx.py), and onnxruntime's path applies them with NumPy. No torch here: the
core install runs models without it.
"""

from __future__ import annotations

from digitlab.errors import DigitlabError

__all__ = ["MNIST_MEAN", "MNIST_STD", "NORMALISATIONS", "mean_std"]

# MNIST's training-set pixel statistics on the [0, 1] scale.
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
# "unit": x / 255 alone (the tutorial); "standard": then (x - MNIST_MEAN) / MNIST_STD.
NORMALISATIONS = ("unit", "standard")


def mean_std(mode: str) -> tuple[float, float]:
    """The (mean, std) that `mode` subtracts and divides by after x / 255."""
    if mode not in NORMALISATIONS:
        raise DigitlabError(f"unknown normalisation {mode!r}")
    return (MNIST_MEAN, MNIST_STD) if mode == "standard" else (0.0, 1.0)
