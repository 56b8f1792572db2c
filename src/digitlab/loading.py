"""Which backend runs a model, and what Recognizer.info() says of it.

The shipped model runs on onnxruntime where that is installed (its ONNX export ships
beside its weights, so torch is never imported), else on PyTorch; a run directory or a
weights file runs on PyTorch; an exported .onnx file on onnxruntime. describe() builds
info() the same way for every backend, from the backend's own facts (Backend.info()).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from digitlab import assets
from digitlab.backends.base import Backend, BackendError
from digitlab.backends.onnx import OnnxBackend
from digitlab.errors import DigitlabError, RunDirError
from digitlab.results import LOW_CONFIDENCE

__all__ = ["describe", "load_backend", "shipped_onnx"]

Loaded = tuple[Backend, dict[str, Any]]  # the backend, and Recognizer.info()


def load_backend(run: str | Path | None, *, device: str = "cpu", backend: str | None = None,
                 threads: int = 0) -> Loaded:
    """The backend for Recognizer.load's arguments, and its info()."""
    from digitlab.choices import BACKENDS

    if backend is not None and backend not in BACKENDS:
        raise DigitlabError(f"--backend must be one of {', '.join(BACKENDS)}; "
                            f"got {backend!r}")
    if run is None and backend != "torch" and device == "cpu":
        shipped = shipped_onnx(threads)
        if shipped is not None:
            return shipped
        if backend == "onnxruntime":
            raise DigitlabError("--backend onnxruntime needs onnxruntime (pip install "
                                "onnxruntime) and the package's default-model.onnx "
                                "(`make default-model`), or an exported model as --run")
    is_onnx = run is not None and Path(run).suffix.lower() == ".onnx"
    if backend == "onnxruntime" or (backend is None and is_onnx):
        return _exported(run, threads)
    if is_onnx:
        raise DigitlabError(f"{run} is an ONNX export: use --backend onnxruntime")
    return _on_torch(run, device)


def _on_torch(run: str | Path | None, device: str) -> Loaded:
    """A run directory or weights file (None: the shipped weights) on PyTorch."""
    from digitlab.backends.torch import TorchBackend
    from digitlab.device import resolve_device
    from digitlab.engine.rundir import CONFIG, load_model, read_json

    dev = resolve_device(device)
    if run is None:
        model, meta = load_model(assets.default_weights(), dev)
        card = assets.read_card()
        config, source = card.get("config", {}), "package default"
    else:
        path = Path(run)
        model, meta = load_model(path, dev)
        config = read_json(path / CONFIG) if (path / CONFIG).is_file() else {}
        card, source = {}, str(path)
    call = TorchBackend(model, meta, device=dev)
    return call, describe(call, source=source, config=config, card=card)


def shipped_onnx(threads: int, folder: Path | None = None) -> Loaded | None:
    """The shipped model (in `folder`, default the package's assets) on onnxruntime; None
    where onnxruntime is not installed or the package's ONNX file is missing or was not
    made from the shipped weights."""
    try:
        import onnxruntime  # noqa: F401  (OnnxBackend needs it anyway)
    except ImportError:
        return None
    folder = folder or assets.folder()
    onnx_file, weights = folder / assets.DEFAULT_ONNX, folder / assets.DEFAULT_WEIGHTS
    if not (onnx_file.is_file() and weights.is_file()):
        return None
    try:
        backend = OnnxBackend(onnx_file, threads=threads)
    except BackendError:  # e.g. an onnxruntime too old for the file: PyTorch runs it
        return None
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    if backend.contract.get("weights_sha256") != digest:
        return None  # stale: PyTorch runs the weights themselves
    card = assets.read_card(folder)
    return backend, describe(backend, source="package default", config=card.get("config"),
                             card=card)


def _exported(run: str | Path | None, threads: int) -> Loaded:
    """onnxruntime on an exported file; its preprocessing contract is in the file."""
    if run is None:
        raise DigitlabError("--backend onnxruntime needs an exported model: "
                            "`digitlab export` writes default-model.onnx; pass it as --run")
    path = Path(run)
    if path.is_dir():
        path = path / "model.onnx"  # where `digitlab export --run RUN` puts it
        if not path.is_file():
            raise RunDirError(f"no {path.name} in {run}: export it first with "
                              f"`digitlab export --run {run}`")
    elif path.suffix.lower() != ".onnx":
        raise DigitlabError(f"--backend onnxruntime runs ONNX files; export {run} first "
                            "with `digitlab export`")
    backend = OnnxBackend(path, threads=threads)
    return backend, describe(backend, source=str(path))


# The model's facts that Recognizer.info() reports, in its order (Backend.info()).
_FACTS = ("model", "model_args", "parameters", "dataset", "classes", "normalize",
          "test_accuracy", "epochs")


def describe(backend: Backend, *, source: str, config: dict[str, Any] | None = None,
             card: dict[str, Any] | None = None) -> dict[str, Any]:
    """Recognizer.info() of a backend: its model's facts, how the model was trained (its
    run's config, or the shipped model's card) and how it runs."""
    config, card = config or {}, card or {}
    facts = backend.info()
    trained = _how_trained(config, card)
    # An export on its own carries only the digitlab version that made it.
    if not trained["trained_with"] and "digitlab_version" in facts:
        trained["trained_with"] = {"digitlab_version": facts["digitlab_version"]}
    return {
        "source": source,
        **{key: facts[key] for key in _FACTS},
        **trained,
        "backend": backend.name,
        "low_confidence_below": LOW_CONFIDENCE,
        "outliers": facts.get("outliers", config.get("outliers", 0.0)),
    }


def _how_trained(config: dict[str, Any], card: dict[str, Any]) -> dict[str, Any]:
    """The part of Recognizer.info() that says how and when the model was trained."""
    return {
        "preset": config.get("preset"),
        "trained": config.get("started"),
        "trained_with": {k: config.get(k) for k in ("digitlab_version", "torch_version",
                                                    "device_used", "git_commit")
                         if config.get(k) is not None},
        "config": config or None,
        "figures": card.get("figures"),
        "command": card.get("command"),
    }
