"""Decode a user's image file into a grey float image, refusing anything unsafe or unusable.

Images come from strangers (uploads, drag-and-drop, CLI paths), so every limit is checked
before pixels are decoded, and every decoder failure becomes one clear `ImageError`.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import warnings
from collections.abc import Iterator
from typing import BinaryIO

import numpy as np
from PIL import ExifTags, Image

from digitlab.errors import ImageError
from digitlab.vision import png
from digitlab.vision.preprocess import MAX_WORK_SIDE, work_shape

Source = str | os.PathLike[str] | bytes | bytearray | memoryview | BinaryIO

MAX_BYTES = 32 * 1024 * 1024
MAX_PIXELS = 40_000_000  # ~ a 50-megapixel phone photo is already absurd for one digit
MIN_SIDE = 4
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP")
# Memory one picture may take to decode (see _decode_bytes): a grey one of MAX_PIXELS, a
# palette one of 33 Mpx, a colour one of 13 Mpx, one with transparency of 8 Mpx. JPEGs,
# decoded at reduced scale, fit whatever their size.
MAX_DECODE_BYTES = 64 * 2**20
RLE_MAX_PIXELS = 2**21  # a run-length compressed BMP (see _check_cost)
RLE_MAX_BYTES = 2**18
_BMP_RLE = (1, 2)  # BMP compression: RLE8, RLE4

# EXIF orientation -> the turn that shows the picture upright (ImageOps.exif_transpose's
# table, applied here to the shrunk picture rather than the whole one).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class TooLarge(ImageError):
    """A file refused for its size: too many bytes or pixels, or more memory or time to
    decode than a picture may take (an HTTP server's 413)."""


class UnknownFormat(ImageError):
    """Data that is no picture in a format digitlab reads (an HTTP server's 415)."""


def decode_image(
    source: Source, *, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS
) -> np.ndarray:
    """Decode a path, bytes or binary file object into a float32 grey image in [0, 1].

    EXIF orientation is applied, transparency is composited onto the background the
    drawing implies, and only the first frame of an animation is used. A picture larger
    than the preprocessing works at comes out shrunk to that size (preprocess.work_shape).
    A server passes a max_pixels below the default to take less work per upload; a file
    refused for its size raises TooLarge.
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
    takes them as they are: the compiled preprocessing reads them a fifth quicker), shrunk
    to the preprocessing's working size as decode_image shrinks every picture. None past
    MAX_WORK_SIDE ** 2 pixels too: the reader here holds the whole file inflated, where
    Pillow's decoder does not."""
    limit = min(max_pixels, MAX_WORK_SIDE**2)
    pixels = png.read_grey(data, max_pixels=limit, min_side=MIN_SIDE)
    if pixels is None or work_shape(*pixels.shape) == pixels.shape:
        return pixels
    height, width = pixels.shape
    # frombuffer shares the pixels' memory where fromarray would copy them
    return np.array(_shrink(Image.frombuffer("L", (width, height), pixels, "raw", "L", 0, 1)))


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
        raise TooLarge(f"{_describe(source)} is larger than the {_mib(max_bytes)} limit")
    return data


def _read_path(path: str, max_bytes: int) -> bytes:
    try:
        # Not blocking: opening a FIFO for reading would wait for a writer forever.
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with open(descriptor, "rb") as handle:
            found = os.fstat(handle.fileno())
            if stat.S_ISDIR(found.st_mode):
                raise ImageError(f"'{path}' is a directory, not an image file")
            if not stat.S_ISREG(found.st_mode):
                raise ImageError(f"'{path}' is not a regular file (a pipe, device or socket)")
            if found.st_size > max_bytes:
                raise TooLarge(f"'{path}' is larger than the {_mib(max_bytes)} limit")
            return handle.read(max_bytes + 1)
    except FileNotFoundError:
        raise ImageError(f"no such image file: '{path}'") from None
    except IsADirectoryError:
        raise ImageError(f"'{path}' is a directory, not an image file") from None
    except OSError as err:
        raise ImageError(f"cannot read '{path}': {err.strerror or err}") from None


def _mib(n: int) -> str:
    return f"{n / 2**20:g} MiB"


def _open(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """Open and decode the first frame, turning every decoder failure into ImageError.

    Nothing is decoded whole that the preprocessing would shrink anyway where the format
    can help it, and nothing whose decoding would take more than MAX_DECODE_BYTES.
    """
    with _quiet():
        try:
            image = Image.open(io.BytesIO(data), formats=FORMATS)
            _check_size(image.size, name, max_pixels)
            image.seek(0)
            # JPEG (and a camera's MPO) can decode at 1/2 to 1/8 scale, in grey; no other
            # format does, and for those draft does nothing.
            height, width = work_shape(image.height, image.width)
            image.draft("L", (width, height))
            _check_cost(image, name, len(data))
            image.load()
            _check_size(image.size, name, max_pixels)
            return image
        except ImageError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise TooLarge(f"{name} has too many pixels (decompression bomb?)") from None
        except Image.UnidentifiedImageError:
            raise UnknownFormat(
                f"{name} is not in a supported image format ({', '.join(FORMATS)})"
            ) from None
        except Exception as err:  # decoders of hostile files raise anything
            raise ImageError(f"{name} is corrupt or truncated: {_one_line(err)}") from None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Pillow warns about oddities it reads past (corrupt EXIF, malformed metadata): nothing
    a user can act on, so the file is read without a word. A decompression bomb's warning
    is an error: such a file must never load."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def _check_cost(image: Image.Image, name: str, size: int) -> None:
    """Refuse, before decoding, a picture that would take too much memory or time."""
    width, height = image.size
    # Pillow's RLE decoder is written in Python: its time follows pixels and runs.
    rle = image.format == "BMP" and image.info.get("compression") in _BMP_RLE
    if rle and (width * height > RLE_MAX_PIXELS or size > RLE_MAX_BYTES):
        raise TooLarge(
            f"{name} is a run-length compressed BMP of {width}x{height} pixels in "
            f"{size:,} bytes; at most {RLE_MAX_PIXELS:,} pixels and {_mib(RLE_MAX_BYTES)} "
            "are read in that form (save it as PNG)"
        )
    needed = _decode_bytes(image)
    if needed > MAX_DECODE_BYTES:
        raise TooLarge(
            f"{name} is {width}x{height} pixels in mode {image.mode}: decoding it would "
            f"take {needed / 2**20:.0f} MiB of memory, more than the "
            f"{_mib(MAX_DECODE_BYTES)} limit "
            "(scale it down)"
        )


def _decode_bytes(image: Image.Image) -> int:
    """Memory that decoding takes at most: Pillow holds the whole picture (a byte a pixel
    in modes 1, L and P, two in I;16, four in the others), and _to_grey makes one copy at
    full size on the way to grey (RGBA and its premultiplied form where there is
    transparency)."""
    mode = image.mode
    held = 1 if mode in ("1", "L", "P") else 2 if mode.startswith("I;16") else 4
    if _has_alpha(image):
        copy = 4 if mode in ("RGBA", "LA") else 8
    elif mode == "L" or mode.startswith(("I", "F")):
        copy = 0
    else:
        copy = 1
    return image.width * image.height * (held + copy)


def _check_size(size: tuple[int, int], name: str, max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise TooLarge(
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
    """Any decoded mode -> float32 [H, W] in [0, 1], transparency composited, upright as
    its EXIF orientation says, shrunk to the size the preprocessing works at (work_shape).

    Pillow shrinks and turns to grey in 8 bits before any float copy is made: a float
    copy of a picture at full size would take 4 to 16 bytes a pixel.
    """
    with _quiet():
        orientation = image.getexif().get(ExifTags.Base.Orientation)
        turn = _UPRIGHT.get(orientation) if isinstance(orientation, int) else None
        mode = image.mode
        if mode.startswith(("I", "F")):
            return _wide_to_grey(np.asarray(_turn(_shrink(image), turn)), mode)
        if _has_alpha(image):
            if mode not in ("RGBA", "LA"):
                image = image.convert("RGBA")
            # Pillow shrinks RGBA weighting colours by alpha, so compositing afterwards
            # gives the mean of what compositing each pixel would.
            pair = np.asarray(_turn(_shrink(image), turn).convert("LA"), dtype=np.float32)
            pair /= 255.0
            return _composite(np.ascontiguousarray(pair[..., 0]),
                              np.ascontiguousarray(pair[..., 1]))
        grey = image if mode == "L" else image.convert("L")
        return np.asarray(_turn(_shrink(grey), turn), dtype=np.float32) / 255.0


def _has_alpha(image: Image.Image) -> bool:
    palette = image.palette.mode if image.mode == "P" and image.palette else ""
    return ("A" in image.mode or "a" in image.mode or "transparency" in image.info
            or "A" in palette)


def _shrink(image: Image.Image) -> Image.Image:
    """The picture at the preprocessing's working size (area averaging), or itself."""
    height, width = work_shape(image.height, image.width)
    if (width, height) == image.size:
        return image
    return image.resize((width, height), Image.Resampling.BOX)


def _turn(image: Image.Image, turn: Image.Transpose | None) -> Image.Image:
    return image if turn is None else image.transpose(turn)


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
