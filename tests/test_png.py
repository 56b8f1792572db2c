"""Plain grey PNGs read and written without Pillow (vision/png.py), checked against Pillow."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from conftest import require_native
from digitlab.results import png_base64, png_bytes
from digitlab.vision import decode, png


def pillow_png(image: np.ndarray, **options) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG", **options)
    return buf.getvalue()


@pytest.mark.parametrize("native", [True, False])
def test_reads_what_pillow_writes_with_every_row_filter(native, monkeypatch) -> None:
    if not native:  # NumPy alone: filter-0 rows, the rest left to Pillow
        monkeypatch.setattr(png, "_flat", None)
    else:
        require_native()
    rng = np.random.default_rng(0)
    read = 0
    for k in range(200):
        h, w = (int(v) for v in rng.integers(1, 150, 2))
        image = (rng.random((h, w)) * 255).astype(np.uint8)
        if k % 2:  # smooth rows: Pillow's encoder then picks Sub, Up, Average, Paeth
            image = np.cumsum(image // 16, axis=1).astype(np.uint8)
        data = pillow_png(image, compress_level=int(rng.integers(0, 10)))
        got = png.read_grey(data, max_pixels=10**8)
        if got is None:
            assert not native  # only NumPy may decline (filtered rows)
        else:
            read += 1
            assert got.dtype == np.uint8 and np.array_equal(got, image)
        unfiltered = png.read_grey(png.write_grey(image), max_pixels=10**8)
        assert unfiltered is not None and np.array_equal(unfiltered, image)
    assert read == 200 or not native


def test_reads_the_pages_encoding() -> None:
    # serve/static/app.js: filter 0 on every row, zlib stream, IHDR/IDAT/IEND only
    image = np.full((140, 140), 255, np.uint8)
    image[20:120, 65:75] = 17
    rows = np.zeros((140, 141), np.uint8)
    rows[:, 1:] = image
    body = zlib.compress(rows.tobytes())
    data = b"".join([png.SIGNATURE, png._chunk(b"IHDR", struct.pack(">IIBBBBB", 140, 140, 8, 0, 0,
                                                                    0, 0)),
                     png._chunk(b"IDAT", body[:100]), png._chunk(b"IDAT", body[100:]),
                     png._chunk(b"IEND", b"")])  # split over two IDAT chunks, as encoders may
    assert np.array_equal(png.read_grey(data, max_pixels=10**6), image)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), image)


def test_written_files_are_what_pillow_reads() -> None:
    rng = np.random.default_rng(1)
    for shape, level in [((28, 28), 1), ((1, 1), 1), ((3, 200), 1), ((97, 5), 1),
                         ((28, 28), 0), ((300, 301), 0), ((1, 1), 9)]:
        image = (rng.random(shape) * 255).astype(np.uint8)
        data = png_bytes(image, level=level)
        with Image.open(io.BytesIO(data)) as opened:
            assert opened.mode == "L" and opened.size == shape[::-1]
            assert np.array_equal(np.asarray(opened), image)
        assert np.array_equal(png.read_grey(data, max_pixels=10**6), image)
    digit = np.zeros((28, 28), np.uint8)
    digit[5:23, 12:16] = 255
    stored, squeezed = png_bytes(digit, level=0), png_bytes(digit)
    assert len(stored) > 28 * 29 > 4 * len(squeezed)  # answers store rows; files compress
    assert base64.b64decode(png_base64(digit)) == stored
    with pytest.raises(ValueError):
        png.write_grey(np.zeros((2, 2, 3), np.uint8))


def test_stored_rows_are_a_valid_zlib_stream() -> None:
    # write_grey(level=0) writes its zlib stream itself: header, one stored block, Adler-32
    # (zlib.decompress checks all three), as zlib's own level 0 writes it here; zlib's below
    # for more than a block holds.
    rng = np.random.default_rng(2)
    for size in (0, 1, 2, 28 * 29, 4097, 65535, 65536, 200_000):
        raw = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        assert zlib.decompress(png._stored(raw)) == raw
        if size <= 4097:
            assert png._stored(raw) == zlib.compress(raw, 0)


def test_anything_else_goes_to_pillow() -> None:
    grey = (np.arange(64 * 48) % 251).astype(np.uint8).reshape(48, 64)
    good = png.write_grey(grey)  # filter-0 rows: read with or without the compiled part
    assert png.read_grey(good, max_pixels=10**6) is not None
    rgb = pillow_png(np.stack([grey] * 3, axis=-1))
    sixteen = pillow_png(grey.astype(np.uint16) * 257)
    header = struct.pack(">IIBBBBB", 64, 48, 8, 0, 0, 0, 1)  # Adam7 interlacing
    interlaced = good[:8] + png._chunk(b"IHDR", header) + good[33:]
    with_alpha = pillow_png(np.stack([grey, grey], axis=-1))
    transparent = io.BytesIO()
    Image.fromarray(grey).save(transparent, "PNG", transparency=0)
    bad_crc = bytearray(good)
    bad_crc[-20] ^= 0xFF  # inside the IDAT data: its CRC no longer matches
    truncated = good[: len(good) // 2]
    # the right CRC around a stream inflating to more than the header promises
    body = zlib.compress(b"\0" * 10_000)
    header = good[:33]
    bomb = header + struct.pack(">I", len(body)) + b"IDAT" + body + struct.pack(
        ">I", zlib.crc32(b"IDAT" + body)) + good[-12:]
    for data in [rgb, sixteen, interlaced, with_alpha, transparent.getvalue(), bytes(bad_crc),
                 truncated, bomb, b"GIF89a", b"", good[:8]]:
        assert png.read_grey(data, max_pixels=10**6) is None
    # limits: the caller's decoder words the refusal
    assert png.read_grey(good, max_pixels=64 * 48 - 1) is None
    assert png.read_grey(good, max_pixels=10**6, min_side=49) is None


def test_decode_image_gives_pillows_pixels_either_way() -> None:
    rng = np.random.default_rng(2)
    image = (rng.random((60, 45)) * 255).astype(np.uint8)
    fast = decode.decode_image(pillow_png(image))
    slow = decode._to_grey(decode._open(pillow_png(image), "x", 10**8))
    assert fast.dtype == slow.dtype == np.float32 and np.array_equal(fast, slow)
    # a damaged plain PNG still gets Pillow's clear refusal
    damaged = bytearray(pillow_png(image))
    damaged[-20] ^= 0xFF
    with pytest.raises(decode.ImageError):
        decode.decode_image(bytes(damaged))


def test_libdeflate_and_zlib_read_alike(monkeypatch) -> None:
    """read_grey inflates with libdeflate (the `deflate` package) where it is installed and
    with zlib otherwise: the same pixels and the same refusals, for whole streams and for
    damaged ones wrapped in right CRCs (bits flipped, cut short, too long, data after).
    One difference: libdeflate decodes a few streams zlib calls invalid (an incomplete
    Huffman code the data never reaches) when their data checks out (its Adler-32): the
    picture is then the real one."""
    assert png._libdeflate is not None  # a dependency of digitlab
    rng = np.random.default_rng(5)
    image = np.full((40, 30), 255, np.uint8)
    image[5:35, 12:18] = 17
    rows = b"".join(b"\0" + image[y].tobytes() for y in range(40))
    stream = zlib.compress(rows, 6)
    streams = [stream, zlib.compress(rows, 0), stream[:-4], stream[:-20], stream + b"tail",
               zlib.compress(rows + b"\0" * 31), zlib.compress(rows[:-1]), b"", b"x\x9c"]
    for _ in range(300):
        damaged = bytearray(stream)
        for _ in range(int(rng.integers(1, 4))):
            damaged[int(rng.integers(0, len(damaged)))] ^= 1 << int(rng.integers(0, 8))
        streams.append(bytes(damaged))
    header = png.write_grey(image)[:33]
    readings: list[bool] = []
    lenient: list[bytes] = []
    for body in streams:
        data = header + struct.pack(">I", len(body)) + b"IDAT" + body + struct.pack(
            ">I", zlib.crc32(b"IDAT" + body)) + png.write_grey(image)[-12:]
        fast = png.read_grey(data, max_pixels=10**6)
        with monkeypatch.context() as m:
            m.setattr(png, "_libdeflate", None)
            slow = png.read_grey(data, max_pixels=10**6)
        if slow is not None:
            assert np.array_equal(fast, slow)
        elif fast is not None:
            lenient.append(body)
            assert np.array_equal(fast, image)
        readings.append(fast is not None)
    assert readings[:3] == [True, True, False] and 3 < sum(readings) < 100
    assert len(lenient) < 10
