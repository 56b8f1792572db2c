"""What every backend is: the Backend protocol, its errors, and the facts it gives."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from digitlab.errors import DigitlabError

__all__ = ["Backend", "BackendError", "ExportError", "model_facts"]


class BackendError(DigitlabError):
    """An exported model file is missing, unreadable or not a digitlab export."""


class ExportError(DigitlabError):
    """An export failed, or the exported file disagrees with the PyTorch model."""


class Backend(Protocol):
    """A loaded model, as Recognizer runs it.

    - `name`: what runs it, "torch" or "onnxruntime".
    - `classes`: the class names, in the order of the probabilities.
    - `backend(pixels) -> probabilities`: uint8 [N, 28, 28] MNIST-style images (0..255),
      before any normalisation (the backend applies its model's own) -> float32
      [N, len(classes)].
    - `info()`: what the model is (its name and arguments, parameters, dataset, classes,
      normalisation, test accuracy, epochs), as its weights or its export record it.
    """

    name: str

    @property
    def classes(self) -> list[str]: ...

    def __call__(self, pixels: np.ndarray) -> np.ndarray: ...

    def info(self) -> dict[str, Any]:
        """The model's facts (model_facts), as its weights or its export record them."""
        ...


def model_facts(meta: dict[str, Any], *, classes: list[str], parameters: int | None
                ) -> dict[str, Any]:
    """What a model's weights metadata, or the contract of its export (which copies those
    keys: backends.onnx.make_contract), says of it, for Recognizer.info()."""
    facts = {
        "model": meta["model"],
        "model_args": meta.get("model_args", {}),
        "parameters": parameters,
        "dataset": meta.get("dataset", "mnist"),
        "classes": classes,
        "normalize": meta.get("normalize", "unit"),
        "test_accuracy": meta.get("test_accuracy"),
        "epochs": meta.get("epoch"),
    }
    if "outliers" in meta:  # trained to call fused pairs non-digits (vision.number)
        facts["outliers"] = meta["outliers"]
    return facts
