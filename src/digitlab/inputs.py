"""From an input image to the 28x28 images a model classifies.

Every input takes the same path the CLI and the HTTP server use: decode (vision/decode.py),
MNIST-style preprocessing (vision/preprocess.py), or segmentation into digits first for
numbers (vision/segment.py, vision/number.py).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from digitlab.errors import ImageError

if TYPE_CHECKING:
    from digitlab.vision.number import Candidates
    from digitlab.vision.preprocess import Preprocessed

__all__ = ["ImageInput", "Prepared", "load_grey", "path_of", "prepare", "prepare_grey",
           "prepare_quickly"]

ImageInput = str | os.PathLike[str] | bytes | bytearray | Image.Image | np.ndarray


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
    # classified (vision.number.choose); None: all of them.
    reader: Candidates | None = None


def path_of(image: ImageInput) -> str | None:
    """The path an input was given as; None for bytes, images and arrays."""
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


def prepare(image: ImageInput, *, number: bool) -> Prepared:
    """Decode and preprocess one input; raises ImageError."""
    return prepare_grey(load_grey(image), path_of(image), number=number)


def prepare_grey(grey: np.ndarray, path: str | None, *, number: bool) -> Prepared:
    """Preprocess a decoded picture: float32 [H, W] in [0, 1], or the uint8 pixels of a
    grey one, taken as v / 255."""
    if number:
        from digitlab.vision.number import candidates

        eight_bit = grey.dtype == np.uint8  # a plain PNG's pixels (decode.plain_pixels)
        found = candidates(grey.astype(np.float32) / 255.0 if eight_bit else grey)
        return Prepared(path, found.images, number=True, reader=found)
    prepared = _one_digit(grey, path, quick=False)
    assert prepared is not None
    return prepared


def prepare_quickly(grey: np.ndarray) -> Prepared | None:
    """prepare_grey of a single digit where the compiled preprocessing takes the picture,
    else None (see Recognizer.prepare_quickly)."""
    return _one_digit(grey, None, quick=True)


def _one_digit(grey: np.ndarray, path: str | None, *, quick: bool) -> Prepared | None:
    """A single digit's 28x28 image (none when blank); with quick, None where only the
    Python steps read the picture."""
    from digitlab.vision.preprocess import (
        flat_to_mnist,
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
        done = flat_to_mnist(grey) if quick else to_mnist(grey)
    return None if done is None else Prepared(path, [] if done.blank else [done.image],
                                              number=False)
