"""A PyTorch model as a backend, and its ONNX twin.

TorchBackend is where the product calls a PyTorch model. onnx_twin exports that model to
ONNX in memory and runs it on onnxruntime, which answers a server's small batches faster;
digitlab.export writes the same ONNX serialisation (onnx_bytes) to files.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import re
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from digitlab.backends.base import BackendError, ExportError, model_facts
from digitlab.backends.onnx import (
    INPUT_NAME,
    OUTPUT_NAME,
    OnnxBackend,
    make_contract,
    with_contract,
)
from digitlab.data.loader import normalise
from digitlab.errors import DigitlabError
from digitlab.normalisation import mean_std

__all__ = ["TOLERANCE", "Probabilities", "TorchBackend", "exporter_failure", "inference_layout",
           "onnx_bytes", "onnx_twin", "probabilities", "quiet_exporter"]

TOLERANCE = 1e-4  # max abs difference of probabilities between an export and PyTorch


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """A model's answer [N, C] as probabilities: the softmax over classes, in float32
    whatever precision the model ran in."""
    return torch.softmax(logits.float(), dim=1)


class Probabilities(nn.Module):
    """The model with softmax on top, so an exported file answers in probabilities."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return probabilities(self.model(x))  # [N, 1, 28, 28] -> [N, C]


def inference_layout(model: nn.Module) -> torch.memory_format:
    """The memory layout a model's inputs and weights are given for inference. Convolutions
    read NHWC (channels_last) faster than NCHW on a CPU once a batch holds a few images
    (oneDNN skips a layout reorder per call), as in training."""
    return (torch.channels_last if any(isinstance(m, nn.Conv2d) for m in model.modules())
            else torch.contiguous_format)


class TorchBackend:
    """A PyTorch model and its weights metadata as a Backend (backends.base): uint8
    [N, 28, 28] -> float32 probabilities [N, classes]."""

    name = "torch"

    def __init__(self, model: nn.Module, meta: dict[str, Any], *,
                 device: torch.device) -> None:
        self.normalize = meta.get("normalize", "unit")
        try:
            mean_std(self.normalize)
        except DigitlabError as exc:
            raise DigitlabError(f"{exc} in the weights metadata") from None
        self.layout = inference_layout(model)
        self.model = model.eval().to(memory_format=self.layout)
        self.meta = meta
        self.classes = [str(c) for c in meta.get("classes", range(10))]
        self.device = device

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        x = normalise(torch.from_numpy(np.array(pixels, dtype=np.uint8)).to(self.device),
                      self.normalize).contiguous(memory_format=self.layout)
        with torch.inference_mode():
            return probabilities(self.model(x)).cpu().numpy()

    def info(self) -> dict[str, Any]:
        """The model's facts from its weights metadata, and its parameter count."""
        return model_facts(self.meta, classes=self.classes,
                           parameters=sum(p.numel() for p in self.model.parameters()))


@contextlib.contextmanager
def quiet_exporter() -> Iterator[io.StringIO]:
    """The exporters print progress and deprecation chatter; keep the CLI's output clean but
    keep the text, so a failure can say what the exporter said."""
    captured = io.StringIO()
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(captured), \
                contextlib.redirect_stderr(captured):
            warnings.simplefilter("ignore")
            yield captured
    finally:
        logger.setLevel(level)


def exporter_failure(exc: BaseException) -> str:
    """An exporter's exception in one line: its type and the first line of its message."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()  # the exporters colour their text
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:300]


def onnx_bytes(model: nn.Module, *, exporter: str = "auto",
               notes: list[str] | None = None) -> tuple[bytes, str]:
    """Serialise `model` (which already returns what the file should) to ONNX with a dynamic
    batch axis. `auto` tries the torch.export-based exporter and falls back to the
    TorchScript-based one; returns (bytes, exporter used)."""
    notes = notes if notes is not None else []
    example = torch.zeros(2, 1, 28, 28)  # 2, not 1: torch.export specialises a size-1 axis
    if exporter in ("auto", "dynamo"):
        try:
            with quiet_exporter():
                program = torch.onnx.export(
                    model, (example,), None, dynamo=True, input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    dynamic_shapes=({0: torch.export.Dim("batch")},),
                )
            assert program is not None  # returned whenever no file name is given
            return program.model_proto.SerializeToString(), "dynamo"
        except Exception as exc:  # the exporter raises many kinds; any of them means "fall back"
            if exporter == "dynamo":
                raise ExportError(f"the torch.export-based ONNX exporter failed "
                                  f"({exporter_failure(exc)})") from None
            notes.append(f"torch.export-based exporter failed ({exporter_failure(exc)}); "
                         "used the TorchScript-based exporter")
    buffer = io.BytesIO()
    try:
        with quiet_exporter():
            torch.onnx.export(
                model, (example,), buffer,  # type: ignore[arg-type]  # file objects work
                dynamo=False, input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )
    except Exception as exc:
        raise ExportError(f"the TorchScript-based ONNX exporter failed ({exporter_failure(exc)})"
                          ) from None
    return buffer.getvalue(), "torchscript"


def onnx_twin(backend: TorchBackend, *, threads: int = 1) -> OnnxBackend:
    """`backend`'s model exported to ONNX in memory (no file) and loaded in onnxruntime,
    for a server that answers faster with it; the TorchScript-based exporter, much
    quicker than the torch.export-based one for a model this small. On 64 seeded random
    images and a blank one the twin must match `backend` within TOLERANCE, else
    ExportError; so must anything that cannot be done (onnxruntime or onnx missing)."""
    model = copy.deepcopy(backend.model).to(memory_format=torch.contiguous_format).cpu()
    model = model.eval()
    contract = make_contract(backend.meta,
                             parameters=sum(p.numel() for p in model.parameters()))
    try:
        blob, _ = onnx_bytes(Probabilities(model).eval(), exporter="torchscript")
        twin = OnnxBackend(with_contract(blob, contract), threads=threads)
    except ImportError as exc:
        raise ExportError(f"no ONNX exporter here ({exc})") from None
    except BackendError as exc:  # onnxruntime missing, or it refused the export
        raise ExportError(str(exc)) from None
    check = np.random.default_rng(0).integers(0, 256, (65, 28, 28), dtype=np.uint8)
    check[-1] = 0
    worst = float(np.abs(twin(check) - backend(check)).max())
    if not worst <= TOLERANCE:
        raise ExportError(f"the in-memory ONNX export differs from PyTorch by {worst:.2e}")
    return twin
