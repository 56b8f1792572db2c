"""What reading an image gives: a Prediction (with a DigitResult per digit of a number),
and its JSON form, the object `digitlab predict --json` prints and the HTTP API answers."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["LOW_CONFIDENCE", "DigitResult", "Prediction", "digit_result", "failed",
           "png_base64", "png_bytes", "prediction"]

# Below this probability an answer is flagged low_confidence. The shipped model is trained
# with label smoothing, so a sure answer scores a little under 1; at 0.6 most of its
# mistakes on MNIST's test set are flagged while good answers rarely are.
LOW_CONFIDENCE = 0.6


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


def digit_result(image: np.ndarray, probs: np.ndarray) -> DigitResult:
    """The DigitResult of a 28x28 model input and the model's probabilities for it."""
    best = int(probs.argmax())
    values = probs.tolist()
    return DigitResult(best, values[best], values, low_confidence=values[best] < LOW_CONFIDENCE,
                       model_input=image)


def prediction(path: str | None, digits: list[DigitResult], *, number: bool,
               top_k: int) -> Prediction:
    """The Prediction of an input read as `digits` (none: blank), as a number or not."""
    blank = not digits
    single = digits[0] if len(digits) == 1 else None
    # Most probable first, ties in class order (a stable sort: as np.argsort(-p, "stable")
    # gives, in a third of its time for ten classes).
    ranked = [] if single is None else [
        (d, single.probabilities[d]) for d in sorted(
            range(len(single.probabilities)), key=single.probabilities.__getitem__,
            reverse=True)[:top_k]]
    if number:
        confidence = float(np.prod([d.confidence for d in digits])) if digits else None
        model_input = (np.concatenate([d.model_input for d in digits], axis=1) if digits
                       else np.zeros((28, 28), np.uint8))
        return Prediction(
            path=path, digit=single.digit if single else None, confidence=confidence,
            probabilities=single.probabilities if single else None, top_k=ranked,
            low_confidence=any(d.low_confidence for d in digits), blank=blank,
            number="".join(str(d.digit) for d in digits) or None, digits=digits,
            model_input=model_input,
        )
    if single is None:
        return Prediction(path, None, None, None, [], low_confidence=False, blank=True,
                          model_input=np.zeros((28, 28), np.uint8))
    return Prediction(path, single.digit, single.confidence, single.probabilities, ranked,
                      low_confidence=single.low_confidence, blank=False,
                      model_input=single.model_input)


def failed(path: str | None, error: str, *, number: bool = False) -> Prediction:
    """The Prediction of an input that could not be read."""
    return Prediction(path, None, None, None, [], low_confidence=False, blank=False,
                      digits=[] if number else None, error=error)


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
