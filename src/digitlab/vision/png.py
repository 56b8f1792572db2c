"""Plain 8-bit greyscale PNGs, read and written without Pillow.

The drawing page sends such a file with every stroke (serve/static/app.js encodes it), and
answers carry one back (the 28x28 input the model saw). Pillow spends a few hundred
microseconds opening and decoding each, mostly on set-up; this reads the same pixels in a
fraction of that. Only the simplest form is read here: a greyscale image, 8 bits per
pixel, not interlaced, no chunk but IHDR, IDAT and IEND, every CRC right. Anything else
gets None, and the caller hands the file to Pillow, which knows every other case and
words every error.
"""

from __future__ import annotations

import functools
import struct
import zlib

import numpy as np

from digitlab.vision.native import flat as _flat  # None: NumPy reads filter-0 rows only

# libdeflate inflates a page's PNG in under half zlib's time. It also reads a few streams
# zlib calls invalid (an incomplete Huffman code the data never reaches) when their data
# checks out against the stream's Adler-32: the picture is then the real one.
try:
    import deflate as _libdeflate
except ImportError:  # pragma: no cover - a dependency; zlib does the same, slower
    _libdeflate = None  # type: ignore[assignment]

SIGNATURE = b"\x89PNG\r\n\x1a\n"
_IHDR = struct.Struct(">IIBBBBB")


def read_grey(data: bytes, *, max_pixels: int, min_side: int = 1) -> np.ndarray | None:
    """uint8 [H, W] of a plain 8-bit greyscale PNG, or None: not one, or not within the
    limits (the caller's decoder then explains why)."""
    found = _plain_grey(data)
    if found is None:
        return None
    width, height, compressed = found
    if width * height > max_pixels or min(width, height) < min_side:
        return None
    expected = height * (width + 1)  # each row: its filter type, then its pixels
    raw = _inflate(compressed, expected)
    if raw is None:
        return None
    image = np.empty((height, width), np.uint8)
    if _flat is not None:
        return image if _flat.unfilter(raw, image) else None
    rows = np.frombuffer(raw, np.uint8).reshape(height, width + 1)
    if rows[:, 0].any():
        return None  # filtered rows: Pillow undoes those
    image[:] = rows[:, 1:]
    return image


def _inflate(compressed: bytes, expected: int) -> bytes | bytearray | None:
    """The zlib stream's data when it is exactly `expected` bytes long; None when it is
    corrupt, truncated or longer (nothing past `expected` is ever inflated)."""
    if _libdeflate is not None:
        try:
            raw = _libdeflate.zlib_decompress(compressed, expected)
        except _libdeflate.DeflateError:
            raw = None  # zlib's reading below decides
        if raw is not None and len(raw) == expected:
            return raw
    inflate = zlib.decompressobj()
    try:
        found = inflate.decompress(compressed, expected)
    except zlib.error:
        return None
    if len(found) != expected or inflate.unconsumed_tail or not inflate.eof:
        return None  # truncated, or more data than the header promises
    return found


def _plain_grey(data: bytes) -> tuple[int, int, bytes] | None:
    """Width, height and the IDAT data, when the file is a plain grey PNG."""
    if not data.startswith(SIGNATURE):
        return None
    at, size = len(SIGNATURE), len(data)
    view = memoryview(data)
    width = height = -1
    idat: list[memoryview] = []
    while at + 12 <= size:
        length, kind = struct.unpack_from(">I4s", data, at)
        end = at + 8 + length
        if end + 4 > size:
            return None
        body = view[at + 8 : end]
        if zlib.crc32(body, zlib.crc32(kind)) != struct.unpack_from(">I", data, end)[0]:
            return None
        if width < 0:  # the first chunk must be the header
            if kind != b"IHDR" or length != _IHDR.size:
                return None
            width, height, depth, colour, compression, filtering, interlace = _IHDR.unpack(body)
            if (depth, colour, compression, filtering, interlace) != (8, 0, 0, 0, 0) or not (
                    0 < width < 2**31 and 0 < height < 2**31):
                return None
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            if not idat:
                return None
            return width, height, bytes(idat[0]) if len(idat) == 1 else b"".join(idat)
        else:
            return None  # any other chunk (transparency, gamma, text, EXIF...): Pillow's
        at = end + 4
    return None


def write_grey(image: np.ndarray, *, level: int = 1) -> bytes:
    """A uint8 [H, W] image as a plain 8-bit greyscale PNG, its rows compressed at zlib
    `level` (0: stored as they are)."""
    pixels = np.ascontiguousarray(image, dtype=np.uint8)
    if pixels.ndim != 2 or not pixels.size:
        raise ValueError(f"expected a non-empty grey image [H, W], got shape {pixels.shape}")
    height, width = pixels.shape
    rows = np.zeros((height, width + 1), np.uint8)  # filter type 0 on every row
    rows[:, 1:] = pixels
    raw = rows.tobytes()
    # level 1: much quicker than the default 6 on a 28x28 digit, for a few more bytes
    compressed = _stored(raw) if level == 0 else zlib.compress(raw, level)
    return b"".join([SIGNATURE, _header(width, height), _chunk(b"IDAT", compressed), _IEND])


def _stored(raw: bytes) -> bytes:
    """zlib.compress(raw, 0), written out: the zlib header, one stored deflate block, the
    Adler-32 of the data (zlib's own set-up costs more than the whole of a 28x28 input);
    zlib's own for data past one block's 65,535 bytes."""
    if len(raw) > 0xFFFF:
        return zlib.compress(raw, 0)
    return b"".join([_STORED_HEADER, _U16.pack(len(raw), len(raw) ^ 0xFFFF), raw,
                     _U32.pack(zlib.adler32(raw))])


@functools.lru_cache(maxsize=16)
def _header(width: int, height: int) -> bytes:
    return _chunk(b"IHDR", _IHDR.pack(width, height, 8, 0, 0, 0, 0))


def _chunk(kind: bytes, body: bytes) -> bytes:
    return b"".join([_U32.pack(len(body)), kind, body,
                     _U32.pack(zlib.crc32(body, zlib.crc32(kind)))])


_U32 = struct.Struct(">I")
_U16 = struct.Struct("<HH")  # a stored block's length and its complement, little-endian
_STORED_HEADER = b"\x78\x01\x01"  # zlib: deflate, 32K window, no preset; final stored block
_IEND = _chunk(b"IEND", b"")
