"""Export a trained model to ONNX or TorchScript, and check the file on the spot.

The exported graph takes normalised float32 images [N, 1, 28, 28] (any N) and returns
probabilities [N, classes]. How to normalise, the class names and the model's identity
travel inside the file (ONNX metadata_props, or TorchScript's extra files), so the file
alone is enough to use it. Every export is run on real test images and compared with the
PyTorch model before it is put in place; a file that disagrees is never written.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict, Unpack

import numpy as np
import torch
from torch import nn

from digitlab.backends.base import BackendError, ExportError
from digitlab.backends.onnx import OnnxBackend, make_contract, with_contract
from digitlab.backends.torch import (
    TOLERANCE,
    Probabilities,
    exporter_failure,
    onnx_bytes,
    probabilities,
    quiet_exporter,
)
from digitlab.files import atomic_output

__all__ = ["EXPORTERS", "FORMATS", "TOLERANCE", "CheckResult", "ExportError", "ExportOptions",
           "ExportResult", "export_model", "export_module", "read_torchscript"]

FORMATS = ("onnx", "torchscript")
EXPORTERS = ("auto", "dynamo", "torchscript")
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}
EXTRA_FILE = "digitlab.json"  # the contract inside a TorchScript archive


@dataclass
class CheckResult:
    images: int
    max_abs_diff: float
    mismatches: int  # images whose predicted class differs
    tolerance: float = TOLERANCE

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance and self.mismatches == 0

    def summary(self) -> str:
        return (f"checked on {self.images} test images: max |Δp| {self.max_abs_diff:.2e} "
                f"(limit {self.tolerance:.0e}), {self.mismatches} different predictions")


@dataclass
class ExportResult:
    path: Path
    format: str
    exporter: str  # which exporter produced the file: dynamo, torchscript, trace or script
    check: CheckResult
    contract: dict[str, Any]
    notes: list[str]


def torchscript_bytes(model: nn.Module, contract: dict[str, Any], *,
                      notes: list[str] | None = None) -> tuple[bytes, str]:
    """Trace (or, failing that, script) the model; the contract goes in as an extra file."""
    notes = notes if notes is not None else []
    example = torch.zeros(2, 1, 28, 28)
    extra = {EXTRA_FILE: json.dumps(contract, sort_keys=True)}
    try:
        with quiet_exporter():
            compiled, how = torch.jit.trace(model, example), "trace"
    except Exception as exc:
        notes.append(f"torch.jit.trace failed ({exporter_failure(exc)}); used torch.jit.script")
        try:
            with quiet_exporter():
                compiled, how = torch.jit.script(model), "script"
        except Exception as exc2:
            raise ExportError(f"TorchScript export failed ({exporter_failure(exc2)})") from None
    buffer = io.BytesIO()
    with quiet_exporter():
        torch.jit.save(compiled, buffer, _extra_files=extra)
    return buffer.getvalue(), how


def read_torchscript(path: Path) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """Load a TorchScript export and its contract."""
    extra = {EXTRA_FILE: ""}
    try:
        with quiet_exporter():
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as exc:
        raise ExportError(f"{path}: not a loadable TorchScript file ({exporter_failure(exc)})"
                          ) from None
    try:
        contract = json.loads(extra[EXTRA_FILE])
    except json.JSONDecodeError:
        raise ExportError(f"{path}: no digitlab contract inside ({EXTRA_FILE})") from None
    return module.eval(), contract


def compare(reference: Callable[[torch.Tensor], np.ndarray],
            candidate: Callable[[torch.Tensor], np.ndarray], images: torch.Tensor,
            *, batch_size: int = 1000) -> CheckResult:
    """Run both on the same normalised images. The first image goes alone and the rest in
    batches whose last one is odd-sized, so the dynamic batch axis is exercised too."""
    chunks = [images[:1]] + [images[i : i + batch_size]
                             for i in range(1, len(images), batch_size)]
    worst, mismatches = 0.0, 0
    for chunk in chunks:
        want, got = reference(chunk), candidate(chunk)
        if got.shape != want.shape:
            raise ExportError(f"exported model returned shape {list(got.shape)} for a batch "
                              f"of {len(chunk)}; PyTorch returned {list(want.shape)}")
        worst = max(worst, float(np.abs(got.astype(np.float64) - want).max()))
        mismatches += int((got.argmax(axis=1) != want.argmax(axis=1)).sum())
    return CheckResult(images=len(images), max_abs_diff=worst, mismatches=mismatches)


def check_images(dataset: str, normalize: str, *, root: Path | None, count: int
                 ) -> torch.Tensor:
    """The first `count` real test images of the model's dataset, normalised as it expects."""
    from digitlab.data.loader import load_test_set

    return load_test_set(dataset, root, torch.device("cpu"), normalize, limit=count).x


def _default_out(run: Path, fmt: str, model_name: str) -> Path:
    suffix = SUFFIX.get(fmt, "")  # an unknown format is refused by export_module
    if run.is_dir() and os.access(run, os.W_OK):
        return run / f"model{suffix}"
    return Path(f"{model_name}{suffix}")


class ExportOptions(TypedDict, total=False):
    """export_module's optional settings, which export_model passes on as they are."""

    root: Path | None  # where the check's test images are (default: the user cache)
    exporter: str  # auto, dynamo or torchscript
    check_count: int  # real test images the file is checked on
    tolerance: float  # largest difference of probabilities from the model's own
    contract_extra: dict[str, Any] | None  # keys added to the contract the file carries


def export_model(*, run: Path, fmt: str = "onnx", out: Path | None = None,
                 **options: Unpack[ExportOptions]) -> ExportResult:
    """Export the model of a run directory (or weights file) as export_module does; `out`
    defaults to a file named after the run and the model."""
    from digitlab.engine.rundir import load_model

    model, meta = load_model(run, "cpu")
    out = out if out is not None else _default_out(run, fmt, meta["model"])
    return export_module(model, meta, fmt=fmt, out=out, **options)


def _check_options(fmt: str, exporter: str, check_count: int) -> None:
    if fmt not in FORMATS:
        raise ExportError(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    if exporter not in EXPORTERS:
        raise ExportError(f"--exporter must be one of {', '.join(EXPORTERS)}; got {exporter!r}")
    if fmt == "torchscript" and exporter == "dynamo":
        raise ExportError("--exporter dynamo is for --format onnx only")
    if check_count < 1:
        raise ExportError("--check-images must be at least 1")


def export_module(
    model: nn.Module,
    meta: dict[str, Any],
    *,
    fmt: str,
    out: Path,
    root: Path | None = None,
    exporter: str = "auto",
    check_count: int = 10000,
    tolerance: float = TOLERANCE,
    contract_extra: dict[str, Any] | None = None,
) -> ExportResult:
    """Export a loaded model whose weights metadata is `meta` (model, model_args, normalize,
    dataset, classes), check the file against the model, and only then write `out`.
    `contract_extra` adds keys to the contract the file carries."""
    _check_options(fmt, exporter, check_count)
    model = model.eval()
    contract = {**make_contract(meta, parameters=sum(p.numel() for p in model.parameters())),
                **(contract_extra or {})}
    wrapped = Probabilities(model).eval()
    if out.is_dir():
        raise ExportError(f"--out {out} is a directory; give a file name")
    notes: list[str] = []
    if fmt == "onnx":
        blob, used = onnx_bytes(wrapped, exporter=exporter, notes=notes)
        blob = with_contract(blob, contract)
    else:
        blob, used = torchscript_bytes(wrapped, contract, notes=notes)

    images = check_images(contract["dataset"], contract["normalize"], root=root,
                          count=check_count)

    @torch.no_grad()
    def reference(x: torch.Tensor) -> np.ndarray:
        return probabilities(model(x)).numpy().astype(np.float64)

    with atomic_output(out) as fh:
        fh.write(blob)
        fh.flush()
        candidate = _exported_call(Path(fh.name), fmt)
        result = compare(reference, candidate, images)
        result.tolerance = tolerance
        if not result.ok:
            raise ExportError(
                f"the exported {fmt} model ({used} exporter) disagrees with PyTorch: "
                f"{result.summary()}; nothing was written to {out}")
    return ExportResult(path=out, format=fmt, exporter=used, check=result, contract=contract,
                        notes=notes)


def _exported_call(path: Path, fmt: str) -> Callable[[torch.Tensor], np.ndarray]:
    """Load the file the way its users will: onnxruntime for ONNX, torch.jit.load otherwise."""
    if fmt == "onnx":
        try:
            backend = OnnxBackend(path)
        except BackendError as exc:
            raise ExportError(f"the exported file does not load in onnxruntime ({exc})"
                              ) from None
        return lambda x: backend.run_normalised(x.numpy())
    module, _ = read_torchscript(path)

    @torch.no_grad()
    def call(x: torch.Tensor) -> np.ndarray:
        return module(x).numpy()

    return call


