"""Small files that ask a decoder for a huge picture: each is built here, byte by byte or
with Pillow, so that no binary file is kept in the repository.

Every one is under the decoder's pixel limit, so it is decoded, not refused by its header.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

from PIL import Image

SIDE = 6300  # 39.7 Mpx: just under the default limit of 40 Mpx
JPEG_SIDE = 6000
BMP_SIDE = 6000
GREY_SIDE = 6324  # 39.99 Mpx


def gif_big_screen() -> bytes:
    """43 bytes: a GIF whose logical screen is SIDE x SIDE, holding one 1x1 frame."""
    header = b"GIF89a" + struct.pack("<HHBBB", SIDE, SIDE, 0x80, 0, 0)  # 2-colour table
    colours = b"\x00\x00\x00\xff\xff\xff"
    control = b"\x21\xf9\x04\x00\x00\x00\x00\x00"  # graphic control: no transparency
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0)
    # LZW, minimum code size 2: clear (4), index 0, end (5), three bits each
    pixels = b"\x02\x02\x44\x01\x00"
    return header + colours + control + frame + pixels + b"\x3b"


def _png(width: int, height: int, depth: int, colour: int, rows: Iterable[bytes],
         extra: bytes = b"") -> bytes:
    packer = zlib.compressobj(9)
    compressed = b"".join(packer.compress(row) for row in rows) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return b"".join([b"\x89PNG\r\n\x1a\n", _chunk(b"IHDR", ihdr), extra,
                     _chunk(b"IDAT", compressed), _chunk(b"IEND", b"")])


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(
        ">I", zlib.crc32(body, zlib.crc32(kind)))


def png_rgba_zeros() -> bytes:
    """~154 KB: an 8-bit RGBA PNG of SIDE x SIDE pixels, all zero (transparent black)."""
    row = bytes(1 + 4 * SIDE)
    return _png(SIDE, SIDE, 8, 6, (row for _ in range(SIDE)))


def png_palette() -> bytes:
    """~39 KB: an 8-bit palette PNG of SIDE x SIDE pixels, all of palette entry 0."""
    row = bytes(1 + SIDE)
    palette = _chunk(b"PLTE", b"\xff\xff\xff\x00\x00\x00")
    return _png(SIDE, SIDE, 8, 3, (row for _ in range(SIDE)), extra=palette)


def png_grey_zeros() -> bytes:
    """~39 KB: a plain 8-bit grey PNG of GREY_SIDE x GREY_SIDE black pixels (the form the
    drawing page sends, read without Pillow)."""
    row = bytes(1 + GREY_SIDE)
    return _png(GREY_SIDE, GREY_SIDE, 8, 0, (row for _ in range(GREY_SIDE)))


def jpeg_white() -> bytes:
    """A white JPEG_SIDE x JPEG_SIDE colour JPEG (~0.5 MB)."""
    buffer = io.BytesIO()
    Image.new("RGB", (JPEG_SIDE, JPEG_SIDE), (255, 255, 255)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def bmp_rle8(side: int = BMP_SIDE) -> bytes:
    """~4.9 MB: a side x side 8-bit RLE BMP of short runs, side a multiple of 30 (Pillow's
    RLE decoder is written in Python, so its cost follows the number of runs)."""
    run = b"\x0f\x00\x0f\xff"  # 15 pixels of colour 0 (black), then 15 of 255 (white)
    line = run * (side // 30) + b"\x00\x00"  # end of line
    pixels = line * side + b"\x00\x01"  # end of bitmap
    palette = b"".join(bytes((i, i, i, 0)) for i in range(256))
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, side, side, 1, 8, 1, len(pixels),
                       2835, 2835, 256, 0)
    head = b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset)
    return head + info + palette + pixels


HOSTILE: dict[str, Callable[[], bytes]] = {
    "gif_big_screen.gif": gif_big_screen,
    "png_rgba_zeros.png": png_rgba_zeros,
    "png_palette.png": png_palette,
    "png_grey_zeros.png": png_grey_zeros,
    "jpeg_white.jpg": jpeg_white,
    "bmp_rle8.bmp": bmp_rle8,
}


def write_all(folder: Path) -> dict[str, Path]:
    """Every hostile file, written into folder; name -> path."""
    paths = {}
    for name, build in HOSTILE.items():
        paths[name] = folder / name
        paths[name].write_bytes(build())
    return paths
