"""digitlab from Python: load a model once, read digits and numbers from images.

    from digitlab.api import Recognizer

    recognizer = Recognizer.load()                  # the model shipped in the package
    result = recognizer.predict("photo.jpg")        # or bytes, a PIL image, a numpy array
    print(result.digit, result.confidence)
    print(recognizer.predict("cheque.png", number=True).number)

Every input takes the same path the CLI and the HTTP server use: decode (vision/decode.py),
MNIST-style preprocessing (vision/preprocess.py), or segmentation into digits first for
numbers (vision/segment.py), then one batched model call.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from digitlab.assets import DEFAULT_CARD, DEFAULT_ONNX, DEFAULT_WEIGHTS
from digitlab.errors import DigitlabError, ImageError, RunDirError

if TYPE_CHECKING:
    import torch

    from digitlab.vision.preprocess import Preprocessed

# Below this probability an answer is flagged low_confidence. The shipped model is trained
# with label smoothing, so a sure answer scores a little under 1; at 0.6 most of its
# mistakes on MNIST's test set are flagged while good answers rarely are.
LOW_CONFIDENCE = 0.6
BATCH_SIZE = 256  # images per model call in predict_many


ImageInput = str | os.PathLike[str] | bytes | bytearray | Image.Image | np.ndarray


@dataclass
class DigitResult:
    """One classified digit."""

    digit: int
    confidence: float
    probabilities: list[float]
    low_confidence: bool
    model_input: np.ndarray = field(repr=False)  # uint8 [28, 28], what the model saw

    def to_json(self, *, include_input: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "digit": self.digit, "confidence": _round(self.confidence),
            "probabilities": [_round(p) for p in self.probabilities],
            "low_confidence": self.low_confidence,
        }
        if include_input:
            out["input_png"] = png_base64(self.model_input)
        return out


@dataclass
class Prediction:
    """The answer for one input image.

    Single digit: digit, confidence, probabilities and top_k describe it; blank means no ink
    was found (digit is then None). With number=True, `number` is the digits read left to
    right and `digits` holds each one; the top-level digit fields are filled only when the
    number has exactly one digit, confidence is the product of the digits' confidences (the
    chance the whole number is right) and low_confidence is set when any digit is low.
    A failed input has `error` set and nothing else.
    """

    path: str | None
    digit: int | None
    confidence: float | None
    probabilities: list[float] | None
    top_k: list[tuple[int, float]]
    low_confidence: bool
    blank: bool
    number: str | None = None
    digits: list[DigitResult] | None = None
    error: str | None = None
    model_input: np.ndarray | None = field(default=None, repr=False)

    def to_json(self, *, include_input: bool = False) -> dict[str, Any]:
        """The object `digitlab predict --json` prints for this input."""
        out: dict[str, Any] = {
            "path": self.path,
            "digit": self.digit,
            "confidence": None if self.confidence is None else _round(self.confidence),
            "probabilities": (None if self.probabilities is None
                              else [_round(p) for p in self.probabilities]),
            "top_k": [[d, _round(p)] for d, p in self.top_k],
            "low_confidence": self.low_confidence,
            "blank": self.blank,
        }
        if self.digits is not None:
            out["number"] = self.number
            out["digits"] = [d.to_json(include_input=include_input) for d in self.digits]
        if self.error is not None:
            out["error"] = self.error
        if include_input and self.model_input is not None:
            out["input_png"] = png_base64(self.model_input)
        return out


def _round(p: float) -> float:
    return round(float(p), 6)


def png_bytes(image: np.ndarray, *, level: int = 1) -> bytes:
    """A grey uint8 image as a PNG file (vision/png.py, quicker than Pillow for a 28x28
    input), compressed at zlib `level`."""
    from digitlab.vision.png import write_grey

    return write_grey(image, level=level)


def png_base64(image: np.ndarray) -> str:
    """The PNG of a model input for a JSON answer, its rows stored uncompressed: a few
    hundred bytes more for a 28x28 input, but zlib's set-up alone costs more than those
    bytes are worth, and serve answers one per drawn digit."""
    return base64.b64encode(png_bytes(image, level=0)).decode("ascii")


# --- the model call ---------------------------------------------------------------------


def inference_layout(model: torch.nn.Module) -> torch.memory_format:
    """The memory layout a model's inputs and weights are given for inference. Convolutions
    read NHWC (channels_last) faster than NCHW on a CPU once a batch holds a few images
    (oneDNN skips a layout reorder per call), as in training."""
    import torch

    return (torch.channels_last if any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
            else torch.contiguous_format)


class TorchBackend:
    """`backend(images) -> probabilities`: uint8 [N, 28, 28] -> float32 [N, classes].

    The one place a model is called. Another backend (onnxruntime for exported files, see
    digitlab.backends) is any object with the same call, `name` and `classes`."""

    name = "torch"

    def __init__(self, model: torch.nn.Module, *, normalize: str, classes: list[str],
                 device: torch.device) -> None:
        self.layout = inference_layout(model)
        self.model = model.eval().to(memory_format=self.layout)
        self.normalize = normalize
        self.classes = classes
        self.device = device

    def __call__(self, images: np.ndarray) -> np.ndarray:
        import torch

        from digitlab.data.loader import normalise

        x = normalise(torch.from_numpy(np.array(images, dtype=np.uint8)).to(self.device),
                      self.normalize).contiguous(memory_format=self.layout)
        with torch.inference_mode():
            return torch.softmax(self.model(x).float(), dim=1).cpu().numpy()


# --- inputs -------------------------------------------------------------------------------


@dataclass
class Prepared:
    """One input after preprocessing: the 28x28 images to classify (one, or one per digit).

    `Recognizer.prepare` makes it and `Recognizer.finish` turns it and the model's
    probabilities for `inputs` into a Prediction; a server classifies the inputs of many
    requests in one model call between the two."""

    path: str | None
    inputs: list[np.ndarray]  # uint8 [28, 28] each; empty when blank
    number: bool
    # For a number: which of the inputs are read as its digits, decided once they are
    # classified (number_reader.choose); None: all of them.
    reader: Any = None


def _path_of(image: ImageInput) -> str | None:
    return os.fspath(image) if isinstance(image, str | os.PathLike) else None


def load_grey(image: ImageInput) -> np.ndarray:
    """Any accepted input -> float32 grey [H, W] in [0, 1], decoded as the CLI decodes files.

    PIL images and arrays go through the same decoder as files (as a lossless PNG), so
    transparency, palettes and 16-bit data are treated alike whatever the input's form.
    """
    from digitlab.vision.decode import decode_image

    if isinstance(image, str | os.PathLike | bytes | bytearray):
        return decode_image(image)
    if isinstance(image, np.ndarray):
        image = _array_to_pil(image)
    if isinstance(image, Image.Image):
        buf = io.BytesIO()
        try:
            image.save(buf, format="PNG", compress_level=1)
        except (OSError, ValueError) as exc:
            raise ImageError(f"cannot use a PIL image of mode {image.mode}: {exc}") from None
        return decode_image(buf.getvalue())
    raise ImageError(f"cannot read an image from a {type(image).__name__}; pass a path, "
                     "bytes, a PIL image or a numpy array")


def _array_to_pil(array: np.ndarray) -> Image.Image:
    """uint8/uint16 or float in [0, 1]; [H, W] grey or [H, W, 3|4] RGB(A)."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageError(f"expected an array [H, W], [H, W, 3] or [H, W, 4], "
                         f"got shape {list(array.shape)}")
    if array.dtype == np.uint16 and array.ndim == 2:
        return Image.fromarray(array, mode="I;16")
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.number):
            raise ImageError(f"expected a numeric array, got dtype {array.dtype}")
        values = np.nan_to_num(array.astype(np.float32))
        if values.max(initial=0.0) > 1.0:
            raise ImageError("float arrays must hold values in [0, 1] (or pass uint8 0..255)")
        array = np.round(np.clip(values, 0.0, 1.0) * 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(array))


def _prepare(image: ImageInput, *, number: bool) -> Prepared:
    return _prepare_grey(load_grey(image), _path_of(image), number=number)


def _prepare_grey(grey: np.ndarray, path: str | None, *, number: bool) -> Prepared:
    if number:
        from digitlab.number_reader import candidates

        eight_bit = grey.dtype == np.uint8  # a plain PNG's pixels (decode.plain_pixels)
        found = candidates(grey.astype(np.float32) / 255.0 if eight_bit else grey)
        return Prepared(path, found.images, number=True, reader=found)
    prepared = _one_digit(grey, path, quick=False)
    assert prepared is not None
    return prepared


def _one_digit(grey: np.ndarray, path: str | None, *, quick: bool) -> Prepared | None:
    """A single digit's 28x28 image (none when blank); with quick, None where only the
    Python steps read the picture."""
    from digitlab.vision.preprocess import (
        _flat_to_mnist,
        from_mnist_like,
        looks_mnist_like,
        to_mnist,
    )

    # An image that already is a 28x28 MNIST digit (white on black, empty border) is fed
    # as is: preprocessing it again could only move it away from what the model learnt.
    done: Preprocessed | None = None
    if grey.shape == (28, 28):
        pixels = grey if grey.dtype == np.uint8 else np.round(grey * 255).astype(np.uint8)
        if looks_mnist_like(pixels):
            done = from_mnist_like(pixels)
    if done is None:
        done = _flat_to_mnist(grey) if quick else to_mnist(grey)
    return None if done is None else Prepared(path, [] if done.blank else [done.image],
                                              number=False)


# --- the recognizer -----------------------------------------------------------------------


class Recognizer:
    """A loaded model plus the preprocessing in front of it. Load once, predict many times."""

    def __init__(self, backend: Callable[[np.ndarray], np.ndarray], *,
                 info: dict[str, Any]) -> None:
        from digitlab.number_reader import weights_for

        self.backend = backend
        self._info = info
        # How --number weighs this model's answers: one trained to call fused pairs of
        # digits non-digits (config `outliers`) is read differently (number_reader.Weights).
        outliers = info.get("outliers") or 0.0
        if not isinstance(outliers, int | float):
            raise DigitlabError(f"{info.get('source')}: 'outliers' must be a number, "
                                f"not a {type(outliers).__name__}")
        self.reading = weights_for(float(outliers))

    @classmethod
    def load(cls, run: str | Path | None = None, *, device: str = "cpu",
             backend: str | None = None, threads: int = 0) -> Recognizer:
        """A run directory or weights file; None: the model shipped in the package.
        backend: "torch", or "onnxruntime" for a file made by `digitlab export` (an .onnx
        run, or the model.onnx inside a run directory); None picks by the file. On the CPU
        the shipped model runs on onnxruntime where that is installed (its ONNX export
        ships beside its weights; same answers within 1e-6, and torch is never imported),
        else on PyTorch; backend="torch", or another device, takes PyTorch.
        threads: onnxruntime's threads per call (0: its default, one per core); PyTorch's
        are process-wide (torch.set_num_threads)."""
        from digitlab.choices import BACKENDS

        if backend is not None and backend not in BACKENDS:
            raise DigitlabError(f"--backend must be one of {', '.join(BACKENDS)}; "
                                f"got {backend!r}")
        if run is None and backend != "torch" and device == "cpu":
            shipped = cls._load_shipped_onnx(threads)
            if shipped is not None:
                return shipped
            if backend == "onnxruntime":
                raise DigitlabError("--backend onnxruntime needs onnxruntime (pip install "
                                    "onnxruntime) and the package's default-model.onnx "
                                    "(`make default-model`), or an exported model as --run")
        is_onnx = run is not None and Path(run).suffix.lower() == ".onnx"
        if backend == "onnxruntime" or (backend is None and is_onnx):
            return cls._load_onnx(run, threads)
        if is_onnx:
            raise DigitlabError(f"{run} is an ONNX export: use --backend onnxruntime")

        from digitlab.device import resolve_device
        from digitlab.engine.rundir import CONFIG, load_model, read_json

        dev = resolve_device(device)
        if run is None:
            with resources.as_file(resources.files("digitlab") / "assets") as assets:
                weights = assets / DEFAULT_WEIGHTS
                if not weights.is_file():
                    raise RunDirError("the package's default model is missing "
                                      f"({weights}); run `make default-model` or pass --run")
                model, meta = load_model(weights, dev)
                card = _read_card(assets)
            config, source = card.get("config", {}), "package default"
        else:
            path = Path(run)
            model, meta = load_model(path, dev)
            config = read_json(path / CONFIG) if (path / CONFIG).is_file() else {}
            card, source = {}, str(path)
        classes = [str(c) for c in meta.get("classes", range(10))]
        call = TorchBackend(model, normalize=meta.get("normalize", "unit"), classes=classes,
                            device=dev)
        info = {
            "source": source,
            "model": meta["model"],
            "model_args": meta.get("model_args", {}),
            "parameters": sum(p.numel() for p in model.parameters()),
            "dataset": meta.get("dataset", "mnist"),
            "classes": classes,
            "normalize": meta.get("normalize", "unit"),
            "test_accuracy": meta.get("test_accuracy"),
            "epochs": meta.get("epoch"),
            **_how_trained(config, card),
            "backend": call.name,
            "low_confidence_below": LOW_CONFIDENCE,
            "outliers": meta.get("outliers", config.get("outliers", 0.0)),
        }
        return cls(call, info=info)

    @classmethod
    def _load_shipped_onnx(cls, threads: int, assets: Path | None = None
                           ) -> Recognizer | None:
        """The shipped model on onnxruntime; None where onnxruntime is not installed or the
        package's ONNX file is missing or was not made from the shipped weights."""
        import hashlib

        try:
            import onnxruntime  # noqa: F401  (OnnxBackend needs it anyway)
        except ImportError:
            return None
        with resources.as_file(resources.files("digitlab") / "assets") as packaged:
            folder = Path(assets or packaged)
            onnx_file, weights = folder / DEFAULT_ONNX, folder / DEFAULT_WEIGHTS
            if not (onnx_file.is_file() and weights.is_file()):
                return None
            from digitlab.backends import BackendError, OnnxBackend

            try:
                backend = OnnxBackend(onnx_file, threads=threads)
            except BackendError:  # e.g. an onnxruntime too old for the file: PyTorch runs it
                return None
            digest = hashlib.sha256(weights.read_bytes()).hexdigest()
            if backend.contract.get("weights_sha256") != digest:
                return None  # stale: PyTorch runs the weights themselves
            card = _read_card(folder)
        return cls(backend, info=_onnx_info(backend, source="package default", card=card))

    @classmethod
    def _load_onnx(cls, run: str | Path | None, threads: int = 0) -> Recognizer:
        """onnxruntime on an exported file; its preprocessing contract is in the file."""
        from digitlab.backends import OnnxBackend

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
        return cls(backend, info=_onnx_info(backend, source=str(path)))

    def on_onnxruntime(self, *, threads: int = 1) -> Recognizer:
        """The same model run by onnxruntime, exported in memory (digitlab.export.onnx_twin):
        one model call costs a third to a half of PyTorch's for the small batches a server
        makes. Raises DigitlabError where that cannot be done (not a PyTorch model here,
        onnxruntime or the exporter missing, an export that disagrees with PyTorch)."""
        if not isinstance(self.backend, TorchBackend):
            raise DigitlabError(f"the model already runs on {self._info['backend']}")
        import torch

        from digitlab.export import onnx_twin

        model = copy.deepcopy(self.backend.model).to(memory_format=torch.contiguous_format)
        meta = {k: self._info[k] for k in ("model", "model_args", "normalize", "dataset",
                                           "classes", "outliers", "test_accuracy")}
        meta["epoch"] = self._info.get("epochs")
        twin = onnx_twin(model.cpu(), meta, self.backend, threads=threads)
        return Recognizer(twin, info={**self._info, "backend": twin.name,
                                      "exported": "to ONNX in memory at start-up"})

    def info(self) -> dict[str, Any]:
        """What the model is, how it was trained and how well it did."""
        return dict(self._info)

    def classify(self, images: np.ndarray) -> np.ndarray:
        """uint8 [N, 28, 28] MNIST-style images -> probabilities float32 [N, classes]."""
        if len(images) == 0:
            return np.zeros((0, len(self._info["classes"])), np.float32)
        return np.concatenate([np.asarray(self.backend(images[i : i + BATCH_SIZE]))
                               for i in range(0, len(images), BATCH_SIZE)])

    def predict(self, image: ImageInput, *, top_k: int = 3, number: bool = False
                ) -> Prediction:
        """Read one image; raises ImageError when it cannot be used."""
        return self._answer([self.prepare(image, number=number)], top_k=top_k)[0]

    @staticmethod
    def prepare(image: ImageInput, *, number: bool = False) -> Prepared:
        """Decode and preprocess one image (no model call); raises ImageError."""
        return _prepare(image, number=number)

    @staticmethod
    def prepare_decoded(grey: np.ndarray, *, number: bool = False) -> Prepared:
        """Preprocess a picture already decoded as load_grey decodes it (float32 [H, W]
        in [0, 1]), or the uint8 pixels [H, W] of a grey one, taken as v / 255 (quicker:
        see decode.plain_pixels); prepare() is this after decoding."""
        return _prepare_grey(grey, None, number=number)

    @staticmethod
    def prepare_quickly(grey: np.ndarray) -> Prepared | None:
        """prepare_decoded of a single digit where the compiled preprocessing takes the
        picture (a drawing on flat paper), else None: a photo, a drawing with ink along
        its border, a picture over 1,600 px, or no compiled part here (the Python steps
        then take tens of times longer). A server reads those in its
        slow lane, so that they hold up no quick one."""
        return _one_digit(grey, None, quick=True)

    def predict_many(self, images: Sequence[ImageInput], *, top_k: int = 3,
                     number: bool = False) -> list[Prediction]:
        """Read many images in batched model calls; a bad input gets Prediction.error
        instead of stopping the rest."""
        prepared: list[Prepared | Prediction] = []
        for image in images:
            try:
                prepared.append(self.prepare(image, number=number))
            except ImageError as exc:
                prepared.append(failed(_path_of(image), str(exc), number=number))
        good = [p for p in prepared if isinstance(p, Prepared)]
        answers = iter(self._answer(good, top_k=top_k))
        return [p if isinstance(p, Prediction) else next(answers) for p in prepared]

    def _answer(self, prepared: list[Prepared], *, top_k: int) -> list[Prediction]:
        return self.finish(prepared, self.classify_prepared(prepared), top_k=top_k)

    def classify_prepared(self, prepared: Sequence[Prepared]) -> np.ndarray:
        """Probabilities of all the prepared inputs' images, in order, in one model call."""
        flat = [img for p in prepared for img in p.inputs]
        return self.classify(np.stack(flat) if flat else np.zeros((0, 28, 28), np.uint8))

    def finish(self, prepared: Sequence[Prepared], probs: np.ndarray, *, top_k: int = 3
               ) -> list[Prediction]:
        """Predictions from prepared inputs and the probabilities of all their `inputs`,
        in order (what `classify` returns for them stacked)."""
        out, at = [], 0
        for p in prepared:
            rows = probs[at : at + len(p.inputs)]
            at += len(p.inputs)
            chosen: Sequence[int] = range(len(p.inputs))
            if p.reader is not None:
                from digitlab.number_reader import choose

                chosen = choose(p.reader, rows, self.reading)
            digits = [_digit(p.inputs[k], rows[k]) for k in chosen]
            out.append(_prediction(p, digits, top_k))
        return out


def _read_card(folder: Path) -> dict[str, Any]:
    """The shipped model's card (how it was trained, its figures); {} when there is none."""
    card = folder / DEFAULT_CARD
    return json.loads(card.read_text()) if card.is_file() else {}


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


def _onnx_info(backend: Any, *, source: str, card: dict[str, Any] | None = None
               ) -> dict[str, Any]:
    """Recognizer.info() of an exported model: from its contract, plus the card of the
    shipped model (how it was trained, its figures) when it is that one."""
    contract, card = backend.contract, card or {}
    trained = _how_trained(card.get("config") or {}, card)
    # An export on its own carries only the digitlab version that made it.
    trained["trained_with"] = trained["trained_with"] or {
        "digitlab_version": contract.get("digitlab_version")}
    return {
        "source": source,
        "model": contract["model"],
        "model_args": contract.get("model_args", {}),
        "parameters": contract.get("parameters"),
        "dataset": contract.get("dataset", "mnist"),
        "classes": backend.classes,
        "normalize": contract["normalize"],
        "test_accuracy": contract.get("test_accuracy"),
        "epochs": contract.get("epoch"),
        **trained,
        "backend": backend.name,
        "low_confidence_below": LOW_CONFIDENCE,
        "outliers": contract.get("outliers", 0.0),
    }


def _digit(image: np.ndarray, probs: np.ndarray) -> DigitResult:
    best = int(probs.argmax())
    values = probs.tolist()
    return DigitResult(best, values[best], values, low_confidence=values[best] < LOW_CONFIDENCE,
                       model_input=image)


def _prediction(p: Prepared, digits: list[DigitResult], top_k: int) -> Prediction:
    blank = not digits
    single = digits[0] if len(digits) == 1 else None
    # Most probable first, ties in class order (a stable sort: as np.argsort(-p, "stable")
    # gives, in a third of its time for ten classes).
    ranked = [] if single is None else [
        (d, single.probabilities[d]) for d in sorted(
            range(len(single.probabilities)), key=single.probabilities.__getitem__,
            reverse=True)[:top_k]]
    if p.number:
        confidence = float(np.prod([d.confidence for d in digits])) if digits else None
        model_input = (np.concatenate([d.model_input for d in digits], axis=1) if digits
                       else np.zeros((28, 28), np.uint8))
        return Prediction(
            path=p.path, digit=single.digit if single else None, confidence=confidence,
            probabilities=single.probabilities if single else None, top_k=ranked,
            low_confidence=any(d.low_confidence for d in digits), blank=blank,
            number="".join(str(d.digit) for d in digits) or None, digits=digits,
            model_input=model_input,
        )
    if single is None:
        return Prediction(p.path, None, None, None, [], low_confidence=False, blank=True,
                          model_input=np.zeros((28, 28), np.uint8))
    return Prediction(p.path, single.digit, single.confidence, single.probabilities, ranked,
                      low_confidence=single.low_confidence, blank=False,
                      model_input=single.model_input)


def failed(path: str | None, error: str, *, number: bool = False) -> Prediction:
    """The Prediction of an input that could not be read."""
    return Prediction(path, None, None, None, [], low_confidence=False, blank=False,
                      digits=[] if number else None, error=error)
