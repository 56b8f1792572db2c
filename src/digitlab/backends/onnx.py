"""Inference without PyTorch in the loop: an exported ONNX file run by onnxruntime.

An exported file carries its own preprocessing contract in its metadata (made by
make_contract, written by with_contract), so this module needs nothing but the file: it
must not import torch, so that a machine with onnxruntime alone can run a model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

import digitlab
from digitlab.backends.base import BackendError, ExportError, model_facts
from digitlab.errors import DigitlabError, first_line
from digitlab.normalisation import mean_std

__all__ = ["FORMAT_VERSION", "INPUT_NAME", "OUTPUT_NAME", "PREFIX", "OnnxBackend",
           "as_pixels", "check_contract", "contract_from_props", "contract_to_props",
           "make_contract", "normalise", "with_contract"]

# Every key digitlab writes into an ONNX file's metadata_props starts with this.
PREFIX = "digitlab."
# Keys whose values are JSON (lists, tables, numbers); the rest are plain strings.
_JSON_KEYS = ("input_shape", "classes", "model_args", "mean", "std", "format_version",
              "parameters", "test_accuracy", "epoch", "outliers")
INPUT_NAME, OUTPUT_NAME = "image", "probabilities"
FORMAT_VERSION = 1


def make_contract(meta: dict[str, Any], *, parameters: int | None = None) -> dict[str, Any]:
    """The preprocessing contract of a model, from its weights metadata (plus what the
    model is and how well it did, for `info()` of whoever loads the file)."""
    normalize = meta.get("normalize", "unit")
    try:
        mean, std = mean_std(normalize)
    except DigitlabError as exc:
        raise ExportError(f"{exc} in the weights metadata") from None
    return {
        "format_version": FORMAT_VERSION,
        "input_name": INPUT_NAME,
        "input_shape": ["N", 1, 28, 28],
        "input_dtype": "float32",
        # x/255 for "unit" (torchvision's ToTensor); then (x - mean) / std for "standard"
        "normalize": normalize,
        "mean": mean,
        "std": std,
        "output_name": OUTPUT_NAME,
        "output": "probabilities",
        "classes": list(meta.get("classes", [str(i) for i in range(10)])),
        "dataset": meta.get("dataset", "mnist"),
        "model": meta["model"],
        "model_args": meta.get("model_args", {}),
        # trained to call fused pairs non-digits: how --number weighs it (vision.number)
        "outliers": meta.get("outliers", 0.0),
        "digitlab_version": digitlab.__version__,
        **({"parameters": parameters} if parameters is not None else {}),
        **{k: meta[k] for k in ("test_accuracy", "epoch") if meta.get(k) is not None},
    }


def with_contract(onnx_blob: bytes, contract: dict[str, Any]) -> bytes:
    """Write the contract into the model's metadata_props (and a readable doc_string)."""
    import onnx

    proto = onnx.load_from_string(onnx_blob)
    props = contract_to_props(contract)
    kept = [p for p in proto.metadata_props if p.key not in props]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name = "digitlab"
    proto.producer_version = digitlab.__version__
    proto.doc_string = (
        f"digitlab {contract['model']}: input '{INPUT_NAME}' float32 [N,1,28,28], pixels/255"
        + (f" then (x-{contract['mean']})/{contract['std']}"
           if contract["normalize"] == "standard" else "")
        + f"; output '{OUTPUT_NAME}' [N,{len(contract['classes'])}] probabilities"
    )
    return proto.SerializeToString()


def contract_to_props(contract: dict[str, Any]) -> dict[str, str]:
    """The contract as ONNX metadata_props: one readable string per key."""
    return {PREFIX + k: json.dumps(v) if k in _JSON_KEYS else str(v) for k, v in contract.items()}


def contract_from_props(props: dict[str, str], *, source: Any = "<contract>"
                        ) -> dict[str, Any]:
    """The contract stored in ONNX metadata_props, checked: BackendError names what is
    wrong with a file whose digitlab keys are missing, not JSON, or of the wrong type."""
    contract: dict[str, Any] = {}
    for key, value in props.items():
        if key.startswith(PREFIX):
            name = key[len(PREFIX):]
            try:
                contract[name] = json.loads(value) if name in _JSON_KEYS else value
            except (ValueError, RecursionError):
                raise BackendError(f"{source}: metadata {key} is not valid JSON") from None
    return check_contract(contract, source)


_NUMBER = (int, float)
_NONE = type(None)
# The keys a contract must hold, then the types of those it may hold.
_REQUIRED = ("model", "normalize", "classes")
_CONTRACT_TYPES: dict[str, tuple[type, ...]] = {
    "model": (str,), "normalize": (str,), "classes": (list,), "model_args": (dict,),
    "mean": _NUMBER, "std": _NUMBER, "outliers": (*_NUMBER, _NONE), "parameters": (int, _NONE),
    "test_accuracy": (*_NUMBER, _NONE), "epoch": (int, _NONE), "dataset": (str,),
    "format_version": (int,), "input_shape": (list,),
}


def check_contract(contract: dict[str, Any], source: Any) -> dict[str, Any]:
    missing = [key for key in _REQUIRED if key not in contract]
    if missing:
        raise BackendError(f"{source}: no digitlab preprocessing contract in its metadata "
                           f"({PREFIX}{missing[0]} is missing); export models with "
                           "`digitlab export`")
    for key, types in _CONTRACT_TYPES.items():
        value = contract.get(key)
        if key in contract and (not isinstance(value, types) or isinstance(value, bool)):
            raise BackendError(f"{source}: metadata {PREFIX}{key} is a {type(value).__name__},"
                               f" not {' or '.join(t.__name__ for t in types)}")
    if not all(isinstance(c, str | int) and not isinstance(c, bool)
               for c in contract["classes"]):
        raise BackendError(f"{source}: metadata {PREFIX}classes must be a list of names")
    if contract.get("std", 1) == 0:
        raise BackendError(f"{source}: metadata {PREFIX}std is 0")
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
    """An exported file run by onnxruntime on the CPU, as a Backend:
    `backend(pixels) -> probabilities [N, classes]`.

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
            raise BackendError(f"{path}: not a loadable ONNX model ({first_line(exc)})"
                               ) from None
        props = self.session.get_modelmeta().custom_metadata_map
        self.contract = contract_from_props(dict(props), source=path)
        self.path = path
        self.input_name = self.session.get_inputs()[0].name
        output = self.session.get_outputs()[0]
        self.output_name = output.name
        width = output.shape[-1] if output.shape else None
        if isinstance(width, int) and width != len(self.contract["classes"]):
            raise BackendError(f"{path}: the model gives {width} probabilities for "
                               f"{len(self.contract['classes'])} classes in its metadata")

    @property
    def classes(self) -> list[str]:
        return list(self.contract["classes"])

    def info(self) -> dict[str, Any]:
        """The model's facts from the file's contract, and the digitlab that exported it."""
        contract = self.contract
        return {**model_facts(contract, classes=self.classes,
                              parameters=contract.get("parameters")),
                "outliers": contract.get("outliers", 0.0),
                "digitlab_version": contract.get("digitlab_version")}

    def run_normalised(self, x: np.ndarray) -> np.ndarray:
        """The raw model call: normalised float32 [N, 1, 28, 28] -> probabilities [N, C]."""
        (probs,) = self.session.run([self.output_name], {self.input_name: x})
        return probs

    def __call__(self, pixels: Any) -> np.ndarray:
        x = np.ascontiguousarray(normalise(as_pixels(pixels), self.contract), dtype=np.float32)
        return self.run_normalised(x)
