"""Hostile inputs for `digitlab serve` and `digitlab predict`, built in code (no binaries are
kept in the repository). The hostile-input tests and benchmarks/hostile.py import them.

Each costly image is small on the wire and huge once decoded: a big canvas that holds
almost nothing. Every function is cached, so a file is built once per process.
"""

from __future__ import annotations

import io
import struct
import zlib
from functools import cache

import numpy as np
from PIL import Image, ImageDraw

SIDE = 6300  # just under the decoder's 40-megapixel limit, like the costly files of the audit
JPEG_SIDE = BMP_SIDE = 6000


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(
        ">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _png(width: int, height: int, colour: int, row: bytes, extra: bytes = b"") -> bytes:
    """A PNG whose every row is `row` (filter byte included), compressed as a stream so the
    raw image is never held in memory."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    deflate = zlib.compressobj(9)
    parts = [deflate.compress(row) for _ in range(height)]
    parts.append(deflate.flush())
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + extra
            + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b""))


@cache
def gif_big_screen(side: int = SIDE) -> bytes:
    """A 43-byte GIF: a `side` x `side` logical screen that holds a single 1x1 frame."""
    return (b"GIF89a" + struct.pack("<HH", side, side) + b"\x80\x00\x00"
            + b"\xff\xff\xff\x00\x00\x00"  # two-colour global table
            + b"!\xf9\x04\x01\x00\x00\x00\x00"  # graphic control: colour 0 transparent
            + b",\x00\x00\x00\x00\x01\x00\x01\x00\x00"  # one 1x1 frame at the origin
            + b"\x02\x02D\x01\x00;")


@cache
def png_rgba_zeros(side: int = SIDE) -> bytes:
    """An all-zero (fully transparent) RGBA PNG, `side` x `side`."""
    return _png(side, side, 6, bytes(1 + 4 * side))


@cache
def png_palette(side: int = SIDE) -> bytes:
    """A palette PNG, `side` x `side`, every pixel palette entry 0 (white)."""
    plte = _chunk(b"PLTE", b"\xff\xff\xff\x00\x00\x00")
    return _png(side, side, 3, bytes(1 + side), plte)


@cache
def jpeg_white(side: int = JPEG_SIDE) -> bytes:
    """A white RGB JPEG, `side` x `side`."""
    buf = io.BytesIO()
    Image.new("RGB", (side, side), "white").save(buf, "JPEG", quality=75)
    return buf.getvalue()


@cache
def bmp_rle8(side: int = BMP_SIDE, run: int = 15) -> bytes:
    """A BMP compressed with RLE8, `side` x `side`: rows of short runs of two colours, which
    Pillow decodes run by run in Python. Kept under 5 MiB, the server's default upload limit."""
    row = bytearray()
    for k, start in enumerate(range(0, side, run)):
        row += bytes((min(run, side - start), 255 * (k % 2)))
    row += b"\x00\x00"  # end of line
    pixels = bytes(row) * side + b"\x00\x01"  # end of bitmap
    palette = b"".join(bytes((v, v, v, 0)) for v in range(256))
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, side, side, 1, 8, 1, len(pixels), 2835, 2835,
                       256, 0)
    return b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + info \
        + palette + pixels


# The five costly images: name -> (builder, Content-Type).
COSTLY = {
    "gif_big_screen": (gif_big_screen, "image/gif"),
    "png_rgba_zeros": (png_rgba_zeros, "image/png"),
    "png_palette": (png_palette, "image/png"),
    "jpeg_white": (jpeg_white, "image/jpeg"),
    "bmp_rle8": (bmp_rle8, "image/bmp"),
}


def costly(name: str) -> tuple[bytes, str]:
    """The costly image `name` (a key of COSTLY) and its Content-Type."""
    build, content_type = COSTLY[name]
    return build(), content_type


# --- ordinary pictures, to check the server still answers normal work ----------------------


def _png_of(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


@cache
def drawing(seed: int = 0) -> bytes:
    """A digit as the drawing page sends one: a dark 7 on white, 140x140 PNG."""
    rng = np.random.default_rng(seed)
    image = Image.new("L", (140, 140), 255)
    draw = ImageDraw.Draw(image)
    dx, dy = (int(v) for v in rng.integers(-8, 9, 2))
    draw.line([(35 + dx, 30 + dy), (105 + dx, 30 + dy), (60 + dx, 115 + dy)], fill=0,
              width=12)
    return _png_of(image)


@cache
def photo() -> bytes:
    """A photo-like JPEG of a handwritten 4 on lit paper, 800x600."""
    rng = np.random.default_rng(1)
    y, x = np.mgrid[0:600, 0:800]
    paper = 200 + 30 * x / 800 - 20 * y / 600 + rng.normal(0, 3, (600, 800))
    image = Image.fromarray(np.clip(paper, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.line([(380, 180), (330, 330), (460, 330)], fill=40, width=16)
    draw.line([(430, 240), (430, 430)], fill=40, width=16)
    buf = io.BytesIO()
    image.convert("RGB").save(buf, "JPEG", quality=85)
    return buf.getvalue()


@cache
def many_strokes(side: int = 1600, strokes: int = 1000, seed: int = 0) -> bytes:
    """A legitimately slow picture for `?number=true`: many short pen strokes on white paper.
    It stays slow once the costly images are cheap, so it keeps the slow lane busy."""
    rng = np.random.default_rng(seed)
    image = Image.new("L", (side, side), 255)
    draw = ImageDraw.Draw(image)
    for _ in range(strokes):
        x, y = (int(v) for v in rng.integers(20, side - 60, 2))
        dx, dy = (int(v) for v in rng.integers(-40, 41, 2))
        draw.line([(x, y), (x + dx, y + dy)], fill=0, width=6)
    return _png_of(image)


# --- hostile requests that are not images -----------------------------------------------


def huge_top_k(digits: int = 5000) -> str:
    """A query string whose top_k has more digits than Python's int() accepts by default."""
    return "top_k=" + "9" * digits


def big_header_request(host: str, size: int = 64 * 2**20) -> list[bytes]:
    """A GET whose one header is `size` bytes long, in pieces of at most 1 MiB."""
    head = f"GET /healthz HTTP/1.1\r\nHost: {host}\r\nX-Big: ".encode()
    piece = b"a" * 2**20
    parts = [head] + [piece[:min(2**20, size - k)] for k in range(0, size, 2**20)]
    return parts + [b"\r\n\r\n"]


def many_headers_request(host: str, count: int = 10_000) -> bytes:
    """A GET with `count` headers."""
    lines = "".join(f"X-H{k}: v\r\n" for k in range(count))
    return f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n{lines}\r\n".encode()
