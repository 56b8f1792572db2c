"""Render MNIST digits as if they were photographed on paper (for benchmarks/realworld.py).

Every random choice comes from the caller's numpy Generator, so a seed fixes the picture.
A picture goes through what a phone camera does to handwriting: dark ink on uneven light
paper (gradient, soft shadow, grain), the digit off-centre at 30-300 px, blur, sensor
noise and a JPEG round trip.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from digitlab.data.outliers import digit_ink as digit_alpha  # crop to ink, scale to a height

HEIGHT_RANGE = (30, 300)
QUALITY_RANGE = (40, 90)


@dataclass(frozen=True)
class Look:
    """The random appearance shared by everything on one sheet of paper."""

    paper: np.ndarray  # RGB paper colour, floats in [0, 1]
    ink: np.ndarray  # RGB ink colour
    blur: float  # Gaussian sigma as a fraction of the digit height
    noise: float  # sensor noise sigma
    quality: int  # JPEG quality


def random_look(rng: np.random.Generator) -> Look:
    """A pen and a sheet of paper: blue, black or pencil-grey ink on off-white paper."""
    paper = rng.uniform(0.75, 0.97) - np.array([0.0, 0.01, 0.04]) * rng.uniform(0, 1)
    pens = np.array([[0.08, 0.08, 0.1], [0.1, 0.15, 0.45], [0.35, 0.35, 0.37]])
    ink = pens[rng.integers(len(pens))] + rng.uniform(-0.05, 0.05)
    return Look(
        paper=np.clip(paper, 0, 1),
        ink=np.clip(ink, 0, 1),
        blur=float(rng.uniform(0.0, 0.012)),
        noise=float(rng.uniform(0.003, 0.03)),
        quality=_quality(rng),
    )


def photo(digit: np.ndarray, rng: np.random.Generator, height: int | None = None) -> np.ndarray:
    """One MNIST digit (uint8 [28, 28], white on black) as a uint8 RGB photo [H, W, 3].

    The digit is `height` px tall, or a random 30-300 px.
    """
    if height is None:
        height = int(rng.integers(HEIGHT_RANGE[0], HEIGHT_RANGE[1] + 1))
    ink = digit_alpha(digit, height)
    # People frame a digit roughly square, even a narrow 1.
    framed = (ink.shape[0], max(ink.shape[1], int(0.75 * ink.shape[0])))
    canvas = _canvas_shape(framed, rng, spare=(1.3, 2.5))
    alpha = _place(ink, canvas, rng)
    return _shoot(alpha, random_look(rng), height, rng)


def photo_jpeg(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """`photo`, encoded as the JPEG file a phone would hand over."""
    return to_jpeg(photo(digit, rng), _quality(rng))


def strip(digits: Sequence[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """3-6 digits written side by side on one sheet, some touching, as uint8 RGB."""
    if not 1 <= len(digits) <= 12:
        raise ValueError(f"strip takes 1-12 digits, got {len(digits)}")
    height = int(rng.integers(40, 161))
    inks = [digit_alpha(d, int(height * rng.uniform(0.9, 1.1))) for d in digits]
    row = _row(inks, height, rng)
    alpha = _place(row, _canvas_shape(row.shape, rng, spare=(1.15, 1.6)), rng)
    return _shoot(alpha, random_look(rng), height, rng)


def strip_jpeg(digits: Sequence[np.ndarray], rng: np.random.Generator) -> bytes:
    """`strip`, encoded as a JPEG file."""
    return to_jpeg(strip(digits, rng), _quality(rng))


def _quality(rng: np.random.Generator) -> int:
    return int(rng.integers(QUALITY_RANGE[0], QUALITY_RANGE[1] + 1))


def _row(inks: list[np.ndarray], height: int, rng: np.random.Generator) -> np.ndarray:
    """Lay digits left to right with gaps from a clear space down to a slight overlap."""
    gaps = rng.uniform(-0.08, 0.45, size=len(inks)) * height
    gaps[0] = 0
    widths = np.array([ink.shape[1] for ink in inks], dtype=np.float64)
    lefts = np.concatenate([[0.0], np.cumsum(widths[:-1] + gaps[1:])])
    lefts = np.maximum.accumulate(np.round(lefts).astype(int))
    tall = max(ink.shape[0] for ink in inks) + height // 5
    wide = int(lefts[-1]) + inks[-1].shape[1]
    row = np.zeros((tall, wide), np.float32)
    for ink, left in zip(inks, lefts, strict=True):
        top = int(rng.integers(0, tall - ink.shape[0] + 1))  # handwriting wanders up and down
        region = row[top : top + ink.shape[0], left : left + ink.shape[1]]
        np.maximum(region, ink, out=region)
    return row


def _canvas_shape(
    ink_shape: tuple[int, ...], rng: np.random.Generator, spare: tuple[float, float]
) -> tuple[int, int]:
    h, w = ink_shape
    return (int(h * rng.uniform(*spare)) + 8, int(w * rng.uniform(*spare)) + 8)


def _place(ink: np.ndarray, canvas: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Put the ink somewhere on the canvas, not necessarily in the middle."""
    out = np.zeros(canvas, np.float32)
    top = int(rng.integers(0, canvas[0] - ink.shape[0] + 1))
    left = int(rng.integers(0, canvas[1] - ink.shape[1] + 1))
    out[top : top + ink.shape[0], left : left + ink.shape[1]] = ink
    return out


def _shoot(alpha: np.ndarray, look: Look, height: int, rng: np.random.Generator) -> np.ndarray:
    """Ink on lit paper, then the camera: blur, noise, 8-bit RGB, JPEG."""
    light = _lighting(alpha.shape, rng) * _grain(alpha.shape, height, rng)
    paper = look.paper[None, None, :] * light[..., None]
    ink = look.ink[None, None, :] * light[..., None]
    a = alpha[..., None]
    image = paper * (1.0 - a) + ink * a
    sigma = look.blur * height
    if sigma > 0.3:
        image = ndimage.gaussian_filter(image, sigma=(sigma, sigma, 0))
    image = image + rng.normal(0.0, look.noise, size=image.shape)
    rgb = np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
    return from_jpeg(to_jpeg(rgb, look.quality))


def _lighting(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A brightness field in (0, 1]: a linear gradient plus a soft-edged shadow."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    yy /= max(shape[0] - 1, 1)
    xx /= max(shape[1] - 1, 1)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xx + np.sin(angle) * yy) * rng.uniform(0.0, 0.25)
    light = 1.0 - (ramp - ramp.min())
    if rng.random() < 0.6:
        # A hand or phone between lamp and paper: a half-plane with a blurred edge.
        cut = rng.uniform(0.2, 0.8)
        angle = rng.uniform(0, 2 * np.pi)
        side = np.cos(angle) * (xx - cut) + np.sin(angle) * (yy - cut)
        edge = 1.0 / (1.0 + np.exp(-side / rng.uniform(0.02, 0.15)))
        light *= 1.0 - rng.uniform(0.1, 0.35) * edge
    return light


def _grain(shape: tuple[int, int], height: int, rng: np.random.Generator) -> np.ndarray:
    """Paper texture: low-pass noise whose grain size follows the photo's scale."""
    grain = ndimage.gaussian_filter(
        rng.normal(0.0, 1.0, size=shape).astype(np.float32), sigma=max(0.7, height / 80)
    )
    grain /= grain.std() + 1e-6
    return 1.0 + grain * rng.uniform(0.005, 0.03)


def to_jpeg(image: np.ndarray, quality: int) -> bytes:
    """Encode a uint8 grey or RGB array as JPEG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=int(quality))
    return buffer.getvalue()


def from_jpeg(data: bytes) -> np.ndarray:
    """Decode JPEG bytes back to a uint8 array (RGB or grey as encoded)."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB" if image.mode != "L" else "L"))


def to_grey(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB -> float32 grey in [0, 1], with the luma weights Pillow uses."""
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return (rgb.astype(np.float32) @ weights) / 255.0
