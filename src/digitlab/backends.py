"""Inference without PyTorch in the loop: an exported ONNX file run by onnxruntime.

An exported file carries its own preprocessing contract in its metadata (written by
digitlab.export), so this module needs nothing but the file: it must not import torch, so
that a machine with onnxruntime alone can run a model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from digitlab.errors import DigitlabError

BACKENDS = ("torch", "onnxruntime")
# Every key digitlab writes into an ONNX file's metadata_props starts with this.
PREFIX = "digitlab."
# Keys whose values are JSON (lists, tables, numbers); the rest are plain strings.
_JSON_KEYS = ("input_shape", "classes", "model_args", "mean", "std", "format_version",
              "parameters", "test_accuracy", "epoch", "outliers")


class BackendError(DigitlabError):
    """An exported model file is missing, unreadable or not a digitlab export."""


def contract_to_props(contract: dict[str, Any]) -> dict[str, str]:
    """The contract as ONNX metadata_props: one readable string per key."""
    return {PREFIX + k: json.dumps(v) if k in _JSON_KEYS else str(v) for k, v in contract.items()}


def contract_from_props(props: dict[str, str]) -> dict[str, Any]:
    contract: dict[str, Any] = {}
    for key, value in props.items():
        if key.startswith(PREFIX):
            name = key[len(PREFIX):]
            contract[name] = json.loads(value) if name in _JSON_KEYS else value
    return contract


def as_pixels(batch: Any) -> np.ndarray:
    """uint8 [N, 28, 28] / [N, 1, 28, 28] (0..255) or float in [0, 1] -> float32 [N, 1, 28, 28]
    in [0, 1], the scale torchvision's ToTensor gives and every normalisation starts from."""
    array = batch.detach().cpu().numpy() if hasattr(batch, "detach") else np.asarray(batch)
    if array.ndim == 3:
        array = array[:, None]
    if array.ndim != 4 or array.shape[1:] != (1, 28, 28):
        raise BackendError(f"expected images of shape [N, 28, 28] or [N, 1, 28, 28], "
                           f"got {list(array.shape)}")
    if array.dtype == np.uint8:
        return array.astype(np.float32) / np.float32(255.0)
    return array.astype(np.float32, copy=False)


def normalise(pixels: np.ndarray, contract: dict[str, Any]) -> np.ndarray:
    """[0, 1] pixels -> the model's input, as the file's contract says."""
    mean = np.float32(contract.get("mean", 0.0))
    std = np.float32(contract.get("std", 1.0))
    return (pixels - mean) / std if (mean != 0 or std != 1) else pixels


class OnnxBackend:
    """`backend(images) -> probabilities [N, classes]` with onnxruntime on the CPU.

    Takes the same batch a PyTorch model call in digitlab takes before normalisation (uint8
    pixels, or floats in [0, 1]) and applies the normalisation stored in the file."""

    name = "onnxruntime"

    def __init__(self, path: Path | bytes, *, threads: int = 0) -> None:
        """An exported file, or the bytes of one (an export made in memory)."""
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendError("--backend onnxruntime needs onnxruntime, part of digitlab's "
                               "own install: pip install onnxruntime") from None
        source: str | bytes
        if isinstance(path, bytes):
            source, path = path, Path("<in memory>")
        else:
            path = Path(path)
            if not path.is_file():
                raise BackendError(f"{path}: no such ONNX file")
            source = str(path)
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only; warnings would clutter the CLI output
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(source, options,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BackendError(f"{path}: not a loadable ONNX model ({first})") from None
        props = self.session.get_modelmeta().custom_metadata_map
        self.contract = contract_from_props(dict(props))
        if "normalize" not in self.contract or "classes" not in self.contract:
            raise BackendError(f"{path}: no digitlab preprocessing contract in its metadata; "
                               "export models with `digitlab export`")
        self.path = path
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    @property
    def classes(self) -> list[str]:
        return list(self.contract["classes"])

    def run_normalised(self, x: np.ndarray) -> np.ndarray:
        """The raw model call: normalised float32 [N, 1, 28, 28] -> probabilities [N, C]."""
        (probs,) = self.session.run([self.output_name], {self.input_name: x})
        return probs

    def __call__(self, images: Any) -> np.ndarray:
        x = np.ascontiguousarray(normalise(as_pixels(images), self.contract), dtype=np.float32)
        return self.run_normalised(x)


def is_onnx_file(path: Path | str | None) -> bool:
    return path is not None and Path(path).suffix.lower() == ".onnx" and Path(path).is_file()
