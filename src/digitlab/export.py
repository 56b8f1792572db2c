"""Export a trained model to ONNX or TorchScript, and check the file on the spot.

The exported graph takes normalised float32 images [N, 1, 28, 28] (any N) and returns
probabilities [N, classes]. How to normalise, the class names and the model's identity
travel inside the file (ONNX metadata_props, or TorchScript's extra files), so the file
alone is enough to use it. Every export is run on real test images and compared with the
PyTorch model before it is put in place; a file that disagrees is never written.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import digitlab
from digitlab.backends import BackendError, OnnxBackend, contract_to_props
from digitlab.errors import DigitlabError
from digitlab.files import atomic_output

FORMATS = ("onnx", "torchscript")
EXPORTERS = ("auto", "dynamo", "torchscript")
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}
TOLERANCE = 1e-4  # max abs difference of probabilities between the file and PyTorch
EXTRA_FILE = "digitlab.json"  # the contract inside a TorchScript archive
INPUT_NAME, OUTPUT_NAME = "image", "probabilities"
FORMAT_VERSION = 1


class ExportError(DigitlabError):
    """An export failed, or the exported file disagrees with the PyTorch model."""


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


class _Probabilities(nn.Module):
    """The model with softmax on top, so an exported file answers in probabilities."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x).float(), dim=1)  # [N, 1, 28, 28] -> [N, C]


def make_contract(meta: dict[str, Any], *, parameters: int | None = None) -> dict[str, Any]:
    """The preprocessing contract of a model, from its weights metadata (plus what the
    model is and how well it did, for `info()` of whoever loads the file)."""
    from digitlab.data.loader import MNIST_MEAN, MNIST_STD

    normalize = meta.get("normalize", "unit")
    if normalize not in ("unit", "standard"):
        raise ExportError(f"unknown normalisation {normalize!r} in the weights metadata")
    mean, std = (MNIST_MEAN, MNIST_STD) if normalize == "standard" else (0.0, 1.0)
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
        # trained to call fused pairs non-digits: how --number weighs it (number_reader)
        "outliers": meta.get("outliers", 0.0),
        "digitlab_version": digitlab.__version__,
        **({"parameters": parameters} if parameters is not None else {}),
        **{k: meta[k] for k in ("test_accuracy", "epoch") if meta.get(k) is not None},
    }


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[io.StringIO]:
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


def _first_line(exc: BaseException) -> str:
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
            with _quiet_exporter():
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
                                  f"({_first_line(exc)})") from None
            notes.append(f"torch.export-based exporter failed ({_first_line(exc)}); "
                         "used the TorchScript-based exporter")
    buffer = io.BytesIO()
    try:
        with _quiet_exporter():
            torch.onnx.export(
                model, (example,), buffer,  # type: ignore[arg-type]  # file objects work
                dynamo=False, input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )
    except Exception as exc:
        raise ExportError(f"the TorchScript-based ONNX exporter failed ({_first_line(exc)})"
                          ) from None
    return buffer.getvalue(), "torchscript"


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


def torchscript_bytes(model: nn.Module, contract: dict[str, Any], *,
                      notes: list[str] | None = None) -> tuple[bytes, str]:
    """Trace (or, failing that, script) the model; the contract goes in as an extra file."""
    notes = notes if notes is not None else []
    example = torch.zeros(2, 1, 28, 28)
    extra = {EXTRA_FILE: json.dumps(contract, sort_keys=True)}
    try:
        with _quiet_exporter():
            compiled, how = torch.jit.trace(model, example), "trace"
    except Exception as exc:
        notes.append(f"torch.jit.trace failed ({_first_line(exc)}); used torch.jit.script")
        try:
            with _quiet_exporter():
                compiled, how = torch.jit.script(model), "script"
        except Exception as exc2:
            raise ExportError(f"TorchScript export failed ({_first_line(exc2)})") from None
    buffer = io.BytesIO()
    with _quiet_exporter():
        torch.jit.save(compiled, buffer, _extra_files=extra)
    return buffer.getvalue(), how


def read_torchscript(path: Path) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """Load a TorchScript export and its contract."""
    extra = {EXTRA_FILE: ""}
    try:
        with _quiet_exporter():
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as exc:
        raise ExportError(f"{path}: not a loadable TorchScript file ({_first_line(exc)})"
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
    if run.is_dir() and os.access(run, os.W_OK):
        return run / f"model{SUFFIX[fmt]}"
    return Path(f"{model_name}{SUFFIX[fmt]}")


def export_model(
    *,
    run: Path,
    fmt: str = "onnx",
    out: Path | None = None,
    root: Path | None = None,
    exporter: str = "auto",
    check_count: int = 10000,
    tolerance: float = TOLERANCE,
    contract_extra: dict[str, Any] | None = None,
) -> ExportResult:
    """Export the model of a run directory (or weights file) and check it on `check_count`
    real test images; the file is only put in place if the check passes. `contract_extra`
    adds keys to the contract the file carries."""
    from digitlab.engine.rundir import load_model

    _check_options(fmt, exporter, check_count)
    model, meta = load_model(run, "cpu")
    out = out if out is not None else _default_out(run, fmt, meta["model"])
    return export_module(model, meta, fmt=fmt, out=out, root=root, exporter=exporter,
                         check_count=check_count, tolerance=tolerance,
                         contract_extra=contract_extra)


def onnx_twin(model: nn.Module, meta: dict[str, Any],
              reference: Callable[[np.ndarray], np.ndarray], *, threads: int = 1
              ) -> OnnxBackend:
    """`model` exported to ONNX in memory (no file) and loaded in onnxruntime, for a server
    that answers faster with it. The TorchScript-based exporter takes 0.3 s for the shipped
    model (the torch.export-based one 6 s). `reference` is the PyTorch call the twin is to
    stand in for (uint8 images -> probabilities): on 64 seeded random images and a blank
    one the twin must match it within TOLERANCE, else ExportError; so must anything that
    cannot be done (onnxruntime or onnx missing)."""
    model = model.eval()
    contract = make_contract(meta, parameters=sum(p.numel() for p in model.parameters()))
    try:
        blob, _ = onnx_bytes(_Probabilities(model).eval(), exporter="torchscript")
        twin = OnnxBackend(with_contract(blob, contract), threads=threads)
    except ImportError as exc:
        raise ExportError(f"no ONNX exporter here ({exc})") from None
    except BackendError as exc:  # onnxruntime missing, or it refused the export
        raise ExportError(str(exc)) from None
    check = np.random.default_rng(0).integers(0, 256, (65, 28, 28), dtype=np.uint8)
    check[-1] = 0
    worst = float(np.abs(twin(check) - reference(check)).max())
    if not worst <= TOLERANCE:
        raise ExportError(f"the in-memory ONNX export differs from PyTorch by {worst:.2e}")
    return twin


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
    wrapped = _Probabilities(model).eval()
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
        return torch.softmax(model(x).float(), dim=1).numpy().astype(np.float64)

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


def default_weights() -> Path:
    """The model shipped inside the package (what predict and serve use without --run)."""
    from importlib import resources

    from digitlab.assets import DEFAULT_WEIGHTS

    path = Path(str(resources.files("digitlab") / "assets" / DEFAULT_WEIGHTS))
    if not path.is_file():
        raise ExportError(f"the package's default model is missing ({path}); pass --run")
    return path
