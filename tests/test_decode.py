"""Decoding user image files: formats, modes, orientation, transparency, hostile input."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from digitlab.errors import ImageError
from digitlab.vision.decode import decode_image

SIZE = (40, 30)  # width, height: not square, so a transposed result is noticed


def sheet(mode: str = "L") -> Image.Image:
    """Black 1-like bar on white paper, with a mark in the top-left corner."""
    image = Image.new("L", SIZE, 255)
    pen = ImageDraw.Draw(image)
    pen.rectangle([18, 5, 21, 25], fill=0)
    pen.rectangle([0, 0, 3, 3], fill=0)
    return image.convert(mode)


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def assert_sheet(grey: np.ndarray, tolerance: float = 0.12) -> None:
    assert grey.dtype == np.float32 and grey.shape == (SIZE[1], SIZE[0])
    assert grey.min() >= 0.0 and grey.max() <= 1.0
    assert grey[15, 19] <= tolerance  # the bar is black
    assert grey[1, 1] <= tolerance  # the corner mark is black
    assert grey[15, 30] >= 1 - tolerance  # the paper is white


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP"])
def test_every_format_decodes(fmt: str) -> None:
    assert_sheet(decode_image(encode(sheet(), fmt)))


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [
        ("1", "PNG"),
        ("1", "BMP"),
        ("L", "PNG"),
        ("P", "PNG"),
        ("P", "GIF"),
        ("RGB", "JPEG"),
        ("RGB", "WEBP"),
        ("RGBA", "PNG"),
        ("LA", "PNG"),
        ("CMYK", "JPEG"),
        ("CMYK", "TIFF"),
        ("I;16", "PNG"),
        ("I", "TIFF"),
    ],
)
def test_every_mode_decodes(mode: str, fmt: str) -> None:
    image = sheet() if mode in ("I;16", "I") else sheet(mode)
    if mode == "I;16":
        image = Image.fromarray(np.asarray(image).astype(np.uint16) * 257)
    elif mode == "I":
        image = Image.fromarray(np.asarray(image).astype(np.int32) * 257)
    assert image.mode == mode
    assert_sheet(decode_image(encode(image, fmt)))


def test_32_bit_tiff_holding_8_bit_values_is_not_mistaken_for_black() -> None:
    image = Image.fromarray(np.asarray(sheet()).astype(np.int32))
    assert image.mode == "I"
    assert_sheet(decode_image(encode(image, "TIFF")))


def test_sixteen_bit_levels_are_scaled_not_clipped() -> None:
    levels = np.full((8, 8), 32768, np.uint16)
    grey = decode_image(encode(Image.fromarray(levels), "PNG"))
    assert np.allclose(grey, 32768 / 65535, atol=1e-4)


def test_gif_uses_the_first_frame() -> None:
    frames = [Image.new("L", SIZE, 255), Image.new("L", SIZE, 0)]
    data = encode(sheet(), "GIF", save_all=True, append_images=frames)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    assert_sheet(decode_image(data))


def test_paths_bytes_and_file_objects(tmp_path: Path) -> None:
    data = encode(sheet(), "PNG")
    path = tmp_path / "digit.png"
    path.write_bytes(data)
    for source in (path, str(path), data, bytearray(data), memoryview(data), io.BytesIO(data)):
        assert_sheet(decode_image(source))
    with path.open("rb") as handle:
        assert_sheet(decode_image(handle))


CORNERS = {
    "top-right": (slice(0, 4), slice(-4, None)),
    "bottom-left": (slice(-4, None), slice(0, 4)),
    "bottom-right": (slice(-4, None), slice(-4, None)),
}


@pytest.mark.parametrize(
    ("orientation", "shape", "corner"),
    [
        (6, (SIZE[0], SIZE[1]), "top-right"),  # camera held rotated: turn 90 deg clockwise
        (8, (SIZE[0], SIZE[1]), "bottom-left"),  # turn 90 deg counter-clockwise
        (3, (SIZE[1], SIZE[0]), "bottom-right"),  # upside down
    ],
)
def test_exif_orientation_is_applied(orientation: int, shape: tuple[int, int], corner: str) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    grey = decode_image(encode(sheet(), "JPEG", exif=exif.tobytes(), quality=95))
    assert grey.shape == shape
    # The mark drawn in the top-left corner turns with the picture.
    assert grey[CORNERS[corner]][1:3, 1:3].mean() < 0.2
    assert grey[1:3, 1:3].mean() > 0.8


def strokes_on_transparent(ink: int) -> Image.Image:
    """A drawing app's export: opaque strokes of grey level `ink`, transparent elsewhere."""
    image = Image.new("RGBA", SIZE, (0, 0, 0, 0))
    ImageDraw.Draw(image).rectangle([18, 5, 21, 25], fill=(ink, ink, ink, 255))
    return image


def test_transparent_png_with_black_strokes_is_black_on_white() -> None:
    grey = decode_image(encode(strokes_on_transparent(0), "PNG"))
    assert grey[15, 19] == 0.0 and grey[15, 30] == 1.0


def test_transparent_png_with_white_strokes_is_white_on_black() -> None:
    grey = decode_image(encode(strokes_on_transparent(255), "PNG"))
    assert grey[15, 19] == 1.0 and grey[15, 30] == 0.0


def test_transparent_la_and_palette_images() -> None:
    la = strokes_on_transparent(0).convert("LA")
    grey = decode_image(encode(la, "PNG"))
    assert grey[15, 19] == 0.0 and grey[15, 30] == 1.0
    palette = Image.new("P", SIZE, 0)
    palette.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    ImageDraw.Draw(palette).rectangle([18, 5, 21, 25], fill=1)  # white strokes
    grey = decode_image(encode(palette, "GIF", transparency=0))
    assert grey[15, 19] == 1.0 and grey[15, 30] == 0.0


def test_soft_alpha_edges_blend_into_the_background() -> None:
    image = Image.new("RGBA", SIZE, (0, 0, 0, 0))
    ImageDraw.Draw(image).rectangle([18, 5, 21, 25], fill=(0, 0, 0, 255))
    ImageDraw.Draw(image).rectangle([22, 5, 22, 25], fill=(0, 0, 0, 128))
    grey = decode_image(encode(image, "PNG"))
    assert abs(grey[15, 22] - (1 - 128 / 255)) < 0.01


def test_mostly_opaque_paper_keeps_its_colour_under_a_transparent_hole() -> None:
    image = Image.new("RGBA", SIZE, (230, 230, 230, 255))  # light grey paper
    pen = ImageDraw.Draw(image)
    pen.rectangle([18, 5, 21, 25], fill=(0, 0, 0, 255))
    pen.rectangle([30, 0, 39, 9], fill=(0, 0, 0, 0))  # a hole cut out of the paper
    grey = decode_image(encode(image, "PNG"))
    assert abs(grey[3, 35] - 230 / 255) < 0.01


def test_fully_transparent_picture_is_an_empty_white_sheet() -> None:
    grey = decode_image(encode(Image.new("RGBA", SIZE, (0, 0, 0, 0)), "PNG"))
    assert grey.min() == 1.0


def forged_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming a huge size, with a few bytes of pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def refused(source: object, pattern: str, **limits: int) -> str:
    with pytest.raises(ImageError, match=pattern) as info:
        decode_image(source, **limits)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message and len(message) < 200
    return message


def test_empty_input_is_refused(tmp_path: Path) -> None:
    refused(b"", "empty")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    assert "empty.png" in refused(empty, "empty")


def test_truncated_jpeg_and_png_are_refused() -> None:
    jpeg = encode(sheet(), "JPEG")
    refused(jpeg[: len(jpeg) // 2], "corrupt or truncated")
    png = encode(sheet(), "PNG")
    refused(png[: len(png) - 30], "corrupt or truncated")


def test_corrupt_pixel_data_is_refused() -> None:
    png = bytearray(encode(sheet(), "PNG"))
    start = png.index(b"IDAT") + 8
    png[start : start + 20] = b"\xff" * 20
    refused(bytes(png), "corrupt or truncated")


def test_text_file_named_png_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "digit.png"
    path.write_text("this is not a picture\n")
    message = refused(path, "not in a supported image format")
    assert "digit.png" in message and "PNG" in message


def test_unsupported_format_is_refused() -> None:
    refused(encode(sheet(), "PPM"), "not in a supported image format")


def test_pixel_bomb_is_refused_before_decoding() -> None:
    # 60000 x 60000 px would need 3.6 GB; the header alone must be enough to refuse it.
    refused(forged_png(60_000, 60_000), "too many pixels")
    # Between our limit and Pillow's own, our limit applies.
    refused(forged_png(8_000, 8_000), r"8000x8000 pixels, more than the 40,000,000")
    # Pillow only warns between its own limit and twice it; that must refuse too.
    refused(forged_png(10_000, 10_000), "too many pixels", max_pixels=10**10)
    # And the limit is per call.
    refused(encode(sheet(), "PNG"), "more than the 1,000 pixel limit", max_pixels=1_000)


def test_oversized_file_is_refused(tmp_path: Path) -> None:
    data = encode(sheet(), "PNG")
    refused(data, "larger than", max_bytes=100)
    path = tmp_path / "big.png"
    path.write_bytes(data)
    refused(path, "larger than", max_bytes=100)
    refused(io.BytesIO(data), "larger than", max_bytes=100)


@pytest.mark.parametrize("size", [(1, 1), (3, 3), (100, 2)])
def test_too_small_images_are_refused(size: tuple[int, int]) -> None:
    refused(encode(Image.new("L", size, 0), "PNG"), "need at least 4x4")


def test_missing_file_directory_and_wrong_type(tmp_path: Path) -> None:
    refused(tmp_path / "nope.png", "no such image file")
    refused(tmp_path, "is a directory")
    refused(12345, "cannot read an image from a int")
    refused(io.StringIO("text"), "binary mode")
