"""digitlab from Python: load a model once, read digits and numbers from images.

    from digitlab import Recognizer

    recognizer = Recognizer.load()                  # the model shipped in the package
    result = recognizer.predict("photo.jpg")        # or bytes, a PIL image, a numpy array
    print(result.digit, result.confidence)
    print(recognizer.predict("cheque.png", number=True).number)

Recognizer is the facade: loading picks a backend (digitlab.loading, digitlab.backends),
the input's preparation is digitlab.inputs, the answer a digitlab.results.Prediction.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from digitlab.backends.base import Backend
from digitlab.errors import DigitlabError, ImageError
from digitlab.inputs import (
    ImageInput,
    Prepared,
    path_of,
    prepare,
    prepare_grey,
    prepare_quickly,
)
from digitlab.loading import load_backend
from digitlab.results import (
    DigitResult,
    Prediction,
    digit_result,
    failed,
    prediction,
)

# The result types live in digitlab.results; digitlab.api.Prediction and .DigitResult
# are where earlier versions published them.
__all__ = ["DigitResult", "Prediction", "Recognizer"]

BATCH_SIZE = 256  # images per model call in predict_many


class Recognizer:
    """A loaded model plus the preprocessing in front of it. Load once, predict many times."""

    def __init__(self, backend: Backend, *, info: dict[str, Any]) -> None:
        from digitlab.vision.number import weights_for

        self.backend = backend
        self._info = info
        # How --number weighs this model's answers: one trained to call fused pairs of
        # digits non-digits (config `outliers`) is read differently (vision.number.Weights).
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
        loaded, info = load_backend(run, device=device, backend=backend, threads=threads)
        return cls(loaded, info=info)

    def on_onnxruntime(self, *, threads: int = 1) -> Recognizer:
        """The same model run by onnxruntime, exported in memory
        (digitlab.backends.torch.onnx_twin): one model call costs a third to a half of
        PyTorch's for the small batches a server makes. Raises DigitlabError where that
        cannot be done (not a PyTorch model here, onnxruntime or the exporter missing, an
        export that disagrees with PyTorch)."""
        if self._info["backend"] != "torch":
            raise DigitlabError(f"the model already runs on {self._info['backend']}")
        from digitlab.backends.torch import TorchBackend, onnx_twin

        if not isinstance(self.backend, TorchBackend):
            raise DigitlabError("only a model that Recognizer.load gave PyTorch can be "
                                "exported to onnxruntime")
        twin = onnx_twin(self.backend, threads=threads)
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
        return prepare(image, number=number)

    @staticmethod
    def prepare_decoded(grey: np.ndarray, *, number: bool = False) -> Prepared:
        """Preprocess a picture already decoded as load_grey decodes it (float32 [H, W]
        in [0, 1]), or the uint8 pixels [H, W] of a grey one, taken as v / 255 (quicker:
        see decode.plain_pixels); prepare() is this after decoding."""
        return prepare_grey(grey, None, number=number)

    @staticmethod
    def prepare_quickly(grey: np.ndarray) -> Prepared | None:
        """prepare_decoded of a single digit where the compiled preprocessing takes the
        picture (a drawing on flat paper), else None: a photo, a drawing with ink along
        its border, a picture over 1,600 px, or no compiled part here (the Python steps
        then take tens of times longer). A server reads those in its
        slow lane, so that they hold up no quick one."""
        return prepare_quickly(grey)

    def predict_many(self, images: Sequence[ImageInput], *, top_k: int = 3,
                     number: bool = False) -> list[Prediction]:
        """Read many images in batched model calls; a bad input gets Prediction.error
        instead of stopping the rest."""
        prepared: list[Prepared | Prediction] = []
        for image in images:
            try:
                prepared.append(self.prepare(image, number=number))
            except ImageError as exc:
                prepared.append(failed(path_of(image), str(exc), number=number))
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
                from digitlab.vision.number import choose

                chosen = choose(p.reader, rows, self.reading)
            digits = [digit_result(p.inputs[k], rows[k]) for k in chosen]
            out.append(prediction(p.path, digits, number=p.number, top_k=top_k))
        return out
