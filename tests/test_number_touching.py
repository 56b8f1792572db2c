"""Touching and overlapping digits in a written number: cut where the classifier, the
digits' widths and the ink crossed agree (vision/number.py + segment.cut_options)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

import digitlab.vision.number as nr
from digitlab.api import Recognizer
from digitlab.vision.segment import cut_options, segment_digits
from test_segment import number as drawn_number


def _crop(digit: np.ndarray) -> np.ndarray:
    rows = np.flatnonzero(digit.max(axis=1) > 0)
    cols = np.flatnonzero(digit.max(axis=0) > 0)
    return digit[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _overlapping(parts: list[np.ndarray], gaps: list[int]) -> np.ndarray:
    """MNIST digits (white on black) left to right, `gaps` px apart (negative: overlapping,
    the strokes merged as one pen would), as dark ink on white paper at 3x: uint8 [H, W]."""
    height = max(p.shape[0] for p in parts)
    row = np.zeros((height, sum(p.shape[1] for p in parts) + sum(gaps)), np.uint8)
    left = 0
    for part, gap in zip(parts, [0, *gaps], strict=True):
        left += gap
        region = row[: part.shape[0], left : left + part.shape[1]]
        np.maximum(region, part, out=region)
        left += part.shape[1]
    return (255 - np.kron(np.pad(row, 10), np.ones((3, 3)))).astype(np.uint8)


def test_two_touching_rings_are_offered_the_cut_at_their_joint() -> None:
    # Two drawn 0s whose rings touch, as the segmenter hands a piece on: white on black.
    image = 1.0 - drawn_number(["0", "0"], [50, 106], width=170)
    assert ndimage.label(image >= 0.5, structure=np.ones((3, 3)))[1] == 1
    left_ring = np.flatnonzero((drawn_number(["0"], [50], width=170) < 0.5).any(axis=0))
    right_ring = np.flatnonzero((drawn_number(["0"], [106], width=170) < 0.5).any(axis=0))
    joint = (right_ring[0] + left_ring[-1]) / 2
    cuts = [parts for parts, _ in cut_options(image) if len(parts) == 2]
    # Among the cuts offered, one leaves exactly one ring on either side.
    assert any(abs(np.flatnonzero((left >= 0.5).any(axis=0)).max() - joint) <= 4
               and abs(np.flatnonzero((right >= 0.5).any(axis=0)).min() - joint) <= 4
               for left, right in cuts)


def test_one_ring_is_not_offered_a_cheap_cut() -> None:
    (piece,) = segment_digits(drawn_number(["0"], [60], width=120))
    # Any cut down through a 0 crosses its top and its bottom.
    assert all(crossed >= 1.5 for _, crossed in cut_options(piece.image))


def test_too_wide_for_the_digit_read_costs_more() -> None:
    found = nr.Candidates(images=[np.zeros((28, 28))] * 2,
                          aspects=[float(np.log(0.7)), float(np.log(1.4))])
    probs = np.full((2, 10), 0.01)
    probs[:, 8] = 0.91  # both read as a confident 8
    normal, wide = nr.digit_scores(found, probs)
    assert wide < normal - 0.1


# MNIST test digits (indexes into the test split) written `gaps` px apart (before the 3x
# scaling; negative: overlapping), the first two touching: one piece of ink, which the
# segmenter with straight cuts checked by the classifier read as one digit (`before`).
TOUCHING = [
    ([1714, 1688, 320], [-3, 6], "969", "89"),
    ([1974, 214, 1355], [-3, 6], "697", "87"),
    ([4, 7, 0, 61], [-2, 5, 5], "4978", "478"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("picks", "gaps", "expected", "before"), TOUCHING)
def test_overlapping_mnist_digits_are_read_exactly(mnist_test_split, picks: list[int],
                                                   gaps: list[int], expected: str,
                                                   before: str) -> None:
    parts = [_crop(np.asarray(mnist_test_split.images[i])) for i in picks]
    assert "".join(str(int(mnist_test_split.labels[i])) for i in picks) == expected
    picture = _overlapping(parts, gaps)
    # Really touching: the first two digits are one piece of ink.
    assert ndimage.label(picture < 128, structure=np.ones((3, 3)))[1] < len(expected)
    assert Recognizer.load().predict(picture, number=True).number == expected
