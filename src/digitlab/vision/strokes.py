"""Stroke geometry of a binary ink mask: its box, its typical stroke width, and its
one-pixel-wide skeleton (what preprocessing and number reading measure strokes with)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["BBox", "mask_bbox", "skeleton", "stroke_width"]

BBox = tuple[int, int, int, int]  # y0, x0, y1, x1 with exclusive ends, in input pixels


def mask_bbox(mask: np.ndarray) -> BBox | None:
    """(y0, x0, y1, x1) of the True pixels, ends exclusive; None when there are none."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def stroke_width(mask: np.ndarray) -> float:
    """Typical stroke width in pixels: twice the depth of the stroke's centre line."""
    box = mask_bbox(mask)
    if box is None:
        return 0.0
    # Every pixel of the box has its nearest background on the one-pixel ring around it,
    # so the distances, and the result, are those of the whole picture.
    y0, x0, y1, x1 = box
    mask = mask[max(0, y0 - 1) : y1 + 1, max(0, x0 - 1) : x1 + 1]
    depth = ndimage.distance_transform_edt(mask)
    # Pixels at least as deep as all eight neighbours lie on the strokes' centre lines.
    ridge = mask & (depth >= ndimage.maximum_filter(depth, size=3))
    if not ridge.any():
        return 0.0
    return 2.0 * float(np.median(depth[ridge])) - 1.0


def skeleton(mask: np.ndarray) -> np.ndarray:
    """One-pixel-wide connected centre lines (Zhang & Suen 1984 thinning, vectorised)."""
    box = mask_bbox(mask)
    out = np.zeros(mask.shape, bool)
    if box is None:
        return out
    # Thinning looks at 3x3 neighbourhoods only, so the ink's box (padded with background
    # below) thins exactly as the whole picture would, for a fraction of the work.
    y0, x0, y1, x1 = box
    out[y0:y1, x0:x1] = _thin(mask[y0:y1, x0:x1])
    return out


def _thin(mask: np.ndarray) -> np.ndarray:
    h, w = mask.shape
    img = np.zeros((h + 2, w + 2), np.uint8)  # a background ring: no neighbour falls off
    img[1:-1, 1:-1] = mask
    flat = img.ravel()
    steps = np.array([dy * (w + 2) + dx for dy, dx in _NEIGHBOURS])
    ink = np.flatnonzero(flat)
    changed = True
    while changed:
        changed = False
        for table in _THIN_TABLES:
            # Each ink pixel's eight neighbours as one byte (neighbour i is bit i), then
            # the rule looked up per byte; only ink pixels are looked at, and only
            # removed ones change, so both sub-iterations stay parallel as the rule wants.
            code = np.packbits(flat[ink[:, None] + steps], axis=1, bitorder="little")[:, 0]
            removable = table[code]
            if removable.any():
                flat[ink[removable]] = 0
                ink = ink[~removable]
                changed = True
    return img[1:-1, 1:-1].astype(bool)


# The eight neighbours clockwise from north (P2..P9 in Zhang & Suen's notation) as
# (dy, dx); neighbour i is bit i of a pixel's neighbourhood code.
_NEIGHBOURS = [(-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1)]


def _zhang_suen_tables() -> tuple[np.ndarray, np.ndarray]:
    """For each neighbourhood code, may the pixel go in the first and in the second
    sub-iteration? A border pixel may when its removal keeps the shape connected and does
    not shorten a line."""
    codes = np.arange(256)
    p = [(codes >> i) & 1 for i in range(8)]
    count = sum(p)
    transitions = sum((p[i] == 0) & (p[(i + 1) % 8] == 1) for i in range(8))
    north, east, south, west = p[0], p[2], p[4], p[6]
    thin = (count >= 2) & (count <= 6) & (transitions == 1)
    first = thin & (north * east * south == 0) & (east * south * west == 0)
    second = thin & (north * east * west == 0) & (north * south * west == 0)
    return first, second


_THIN_TABLES = _zhang_suen_tables()
