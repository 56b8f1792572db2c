"""Decode a user's image file into a grey float image, refusing anything unsafe or unusable.

Images come from strangers (uploads, drag-and-drop, CLI paths), so every limit is checked
before pixels are decoded, and every decoder failure becomes one clear `ImageError`.
"""

from __future__ import annotations

import io
import os
import warnings
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from digitlab.errors import ImageError
from digitlab.vision import png

Source = str | os.PathLike[str] | bytes | bytearray | memoryview | BinaryIO

MAX_BYTES = 32 * 1024 * 1024
MAX_PIXELS = 40_000_000  # ~ a 50-megapixel phone photo is already absurd for one digit
MIN_SIDE = 4
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP")

# Luma weights of ITU-R 601-2, the ones Pillow's own "L" conversion uses.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def decode_image(
    source: Source, *, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS
) -> np.ndarray:
    """Decode a path, bytes or binary file object into a float32 grey image in [0, 1].

    EXIF orientation is applied, transparency is composited onto the background the
    drawing implies, and only the first frame of an animation is used.
    """
    data = _read_bytes(source, max_bytes)
    plain = plain_grey(data, max_pixels=max_pixels)
    if plain is not None:
        return plain
    name = _describe(source)
    image = _open(data, name, max_pixels)
    try:
        return _to_grey(image)
    except (ValueError, OSError) as err:
        raise ImageError(f"{name} has an unsupported colour mode {image.mode}: {err}") from None


def plain_grey(data: bytes, *, max_pixels: int = MAX_PIXELS) -> np.ndarray | None:
    """decode_image of a plain 8-bit greyscale PNG (what the drawing page sends; see
    vision/png.py), read without Pillow, to the same pixels; None for any other file, or
    one past the limits, which decode_image hands to Pillow."""
    pixels = plain_pixels(data, max_pixels=max_pixels)
    return None if pixels is None else pixels.astype(np.float32) / 255.0


def plain_pixels(data: bytes, *, max_pixels: int = MAX_PIXELS) -> np.ndarray | None:
    """plain_grey's uint8 pixels, before they become v / 255 (Recognizer.prepare_decoded
    takes them as they are: the compiled preprocessing reads them a fifth quicker)."""
    return png.read_grey(data, max_pixels=max_pixels, min_side=MIN_SIDE)


def _describe(source: Source) -> str:
    if isinstance(source, str | os.PathLike):
        return f"'{os.fspath(source)}'"
    return "the image data"


def _read_bytes(source: Source, max_bytes: int) -> bytes:
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    elif isinstance(source, str | os.PathLike):
        data = _read_path(os.fspath(source), max_bytes)
    elif hasattr(source, "read"):
        # Read one byte past the limit so an oversized stream is detected without reading it all.
        data = source.read(max_bytes + 1)
        if not isinstance(data, bytes):
            raise ImageError("image stream must be opened in binary mode")
    else:
        raise ImageError(f"cannot read an image from a {type(source).__name__}")
    if not data:
        raise ImageError(f"{_describe(source)} is empty (0 bytes)")
    if len(data) > max_bytes:
        raise ImageError(f"{_describe(source)} is larger than the {_mib(max_bytes)} limit")
    return data


def _read_path(path: str, max_bytes: int) -> bytes:
    try:
        size = os.stat(path).st_size
        if os.path.isdir(path):
            raise ImageError(f"'{path}' is a directory, not an image file")
        if size > max_bytes:
            raise ImageError(f"'{path}' is larger than the {_mib(max_bytes)} limit")
        with open(path, "rb") as handle:
            return handle.read(max_bytes + 1)
    except FileNotFoundError:
        raise ImageError(f"no such image file: '{path}'") from None
    except OSError as err:
        raise ImageError(f"cannot read '{path}': {err.strerror or err}") from None


def _mib(n: int) -> str:
    return f"{n / 2**20:g} MiB"


def _open(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """Open and fully decode the first frame, turning every decoder failure into ImageError."""
    with warnings.catch_warnings():
        # Pillow only warns between its global limit and twice it; a bomb must never load.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=FORMATS)
            _check_size(image.size, name, max_pixels)
            image.seek(0)
            image.load()
            _check_size(image.size, name, max_pixels)
            return ImageOps.exif_transpose(image)
        except ImageError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageError(f"{name} has too many pixels (decompression bomb?)") from None
        except Image.UnidentifiedImageError:
            raise ImageError(
                f"{name} is not in a supported image format ({', '.join(FORMATS)})"
            ) from None
        except Exception as err:  # decoders of hostile files raise anything
            raise ImageError(f"{name} is corrupt or truncated: {_one_line(err)}") from None


def _check_size(size: tuple[int, int], name: str, max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise ImageError(
            f"{name} is {width}x{height} pixels, more than the {max_pixels:,} pixel limit"
        )
    if min(width, height) < MIN_SIDE:
        raise ImageError(
            f"{name} is only {width}x{height} pixels; need at least {MIN_SIDE}x{MIN_SIDE}"
        )


def _one_line(err: Exception) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__


def _to_grey(image: Image.Image) -> np.ndarray:
    """Any decoded mode -> float32 [H, W] in [0, 1], transparency composited."""
    mode = image.mode
    if mode.startswith(("I", "F")):
        return _wide_to_grey(np.asarray(image), mode)
    if mode == "P" or "A" in mode or "a" in mode or "transparency" in image.info:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
        return _composite(_luma(rgba[..., :3]), rgba[..., 3])
    if mode in ("L", "1"):
        return np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return _luma(rgb)


def _luma(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(rgb @ _LUMA, dtype=np.float32)


def _wide_to_grey(values: np.ndarray, mode: str) -> np.ndarray:
    """16/32-bit integer and float modes; the full scale is inferred where the mode hides it."""
    values = values.astype(np.float32)
    if mode == "F":
        full = 1.0 if values.max(initial=0.0) <= 1.0 else 255.0
    elif mode.startswith("I;16"):
        full = 65535.0
    else:
        # Mode "I" carries 8-bit TIFFs as well as 16-bit PNGs from older encoders.
        full = 255.0 if values.max(initial=0.0) <= 255.0 else 65535.0
    return np.clip(values / full, 0.0, 1.0)


def _composite(grey: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Put transparent pixels on the background the picture implies.

    A drawing app exports strokes on a transparent canvas: dark strokes were drawn on
    white and light strokes on black, so the background contrasts with the opaque ink.
    When most of the picture is opaque, the opaque part is the paper, so match it instead.
    """
    if alpha.min() >= 1.0:
        return grey
    opaque = alpha > 0.5
    if not opaque.any():
        return np.ones_like(grey)  # nothing drawn: an empty white sheet
    if opaque.mean() >= 0.5:
        background = float(np.median(grey[opaque]))
    else:
        ink = float(np.average(grey, weights=alpha))
        background = 1.0 if ink < 0.5 else 0.0
    return np.asarray(grey * alpha + background * (1.0 - alpha), dtype=np.float32)
