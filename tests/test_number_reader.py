"""The classifier checking the segmentation of a number: joining a digit the ink broke in
two, keeping real neighbours apart, and the choice itself on known probabilities."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import digitlab.vision.number as nr
from digitlab.api import Recognizer
from digitlab.vision.segment import segment_digits


def _probs(*rows: tuple[int, float]) -> np.ndarray:
    """One probability row per (digit, probability); the rest spread evenly."""
    out = np.zeros((len(rows), 10))
    for k, (digit, p) in enumerate(rows):
        out[k] = (1 - p) / 9
        out[k, digit] = p
    return out


def test_choose_keeps_confident_pieces_apart():
    found = nr.Candidates(images=[np.zeros((28, 28))] * 3, singles=[0, 1], merges={0: 2})
    assert nr.choose(found, _probs((2, 0.95), (1, 0.95), (7, 0.99))) == [0, 1]


def test_choose_joins_two_unsure_halves_into_a_sure_digit():
    found = nr.Candidates(images=[np.zeros((28, 28))] * 4, singles=[0, 1, 2], merges={1: 3})
    probs = _probs((2, 0.95), (1, 0.4), (7, 0.5), (0, 0.97))
    assert nr.choose(found, probs) == [0, 3]


def test_choose_cuts_an_unsure_piece_into_two_sure_digits():
    found = nr.Candidates(images=[np.zeros((28, 28))] * 5, singles=[0, 1],
                          splits={1: [([2, 3], 1.0), ([3, 4], 1.0)]})
    probs = _probs((2, 0.95), (8, 0.3), (1, 0.97), (7, 0.96), (4, 0.2))
    assert nr.choose(found, probs) == [0, 2, 3]
    # The margin: halves only slightly likelier than the whole do not win.
    probs = _probs((2, 0.95), (8, 0.9), (1, 0.97), (7, 0.96), (4, 0.2))
    assert nr.choose(found, probs) == [0, 1]


def test_choose_moves_a_cut_off_part_to_the_piece_it_belongs_to():
    # Piece 0 is the left stroke of a 0 (unsure), piece 1 its right stroke touching a 6
    # (unsure); cut, the stroke alone is a sure 1 and the 6 a sure 6, and joined with
    # piece 0 the stroke makes a sure 0.
    found = nr.Candidates(images=[np.zeros((28, 28))] * 5, singles=[0, 1],
                          splits={1: [([2, 3], 1.0)]}, borrows={0: [([4, 3], 1.0)]})
    probs = _probs((0, 0.59), (6, 0.11), (1, 0.86), (6, 0.96), (0, 0.97))
    assert nr.choose(found, probs, nr.REJECTING) == [4, 3]  # "06", not "016"
    found.borrows = {}
    assert nr.choose(found, probs, nr.REJECTING) == [0, 2, 3]


def _crop(digit: np.ndarray) -> np.ndarray:
    rows = np.flatnonzero(digit.max(axis=1) > 0)
    cols = np.flatnonzero(digit.max(axis=0) > 0)
    return digit[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _paper(parts: list[np.ndarray], gaps: list[int]) -> np.ndarray:
    """Digits (white on black) left to right with the given gaps, as dark ink on white
    paper at 3x scale: float grey [H, W]."""
    height = max(p.shape[0] for p in parts)
    width = sum(p.shape[1] for p in parts) + sum(gaps)
    row = np.zeros((height, width), np.uint8)
    left = 0
    for part, gap in zip(parts, [0, *gaps], strict=True):
        left += gap
        row[: part.shape[0], left : left + part.shape[1]] = part
        left += part.shape[1]
    return 1.0 - np.kron(np.pad(row, 10), np.ones((3, 3))) / 255.0


def test_a_model_that_rejects_fused_pairs_is_weighed_differently():
    assert nr.weights_for(0.0) is nr.PLAIN and nr.weights_for(0.1) is nr.REJECTING
    # Two unsure halves against their join, itself unsure: a plain model's unsure join
    # means nothing (it is unsure of fused pairs only by chance), so the join needs a
    # margin; a rejecting model's doubt is informative, so the join competes evenly.
    found = nr.Candidates(images=[np.zeros((28, 28))] * 3, singles=[0, 1], merges={0: 2})
    probs = _probs((1, 0.6), (7, 0.6), (4, 0.45))
    assert nr.choose(found, probs, nr.PLAIN) == [0, 1]
    assert nr.choose(found, probs, nr.REJECTING) == [2]
    assert Recognizer.load().reading is nr.REJECTING  # the shipped model was shown pairs


@pytest.mark.slow
def test_a_zero_broken_in_two_is_read_as_one_digit(mnist_test_split):
    images = mnist_test_split.images
    two, zero, one = _crop(images[1]), _crop(images[3]), _crop(images[2])
    half = zero.shape[1] // 2
    broken = np.zeros((zero.shape[0], zero.shape[1] + 4), np.uint8)
    broken[:, :half], broken[:, half + 4 :] = zero[:, :half], zero[:, half:]
    picture = _paper([two, broken, one], [6, 6])
    assert len(segment_digits(picture)) > 3  # the ink alone sees the 0 as two digits
    recognizer = Recognizer.load()
    assert recognizer.predict((picture * 255).astype(np.uint8), number=True).number == "201"
    recognizer.reading = dataclasses.replace(recognizer.reading, merge_margin=float("inf"))
    assert recognizer.predict((picture * 255).astype(np.uint8), number=True).number != "201"


@pytest.mark.slow
def test_half_a_zero_touching_the_next_digit_goes_back_to_its_other_half(
        mnist_test_split, monkeypatch):
    images = mnist_test_split.images
    two, zero, six = _crop(images[1]), _crop(images[3]), _crop(images[11])
    half = zero.shape[1] // 2
    # The 0 in two strokes, 4 px apart; its right stroke and the 6 overlap by a pixel.
    strokes = np.zeros((max(zero.shape[0], six.shape[0]), zero.shape[1] + 4 + six.shape[1] - 1),
                       np.uint8)
    strokes[: zero.shape[0], :half] = zero[:, :half]
    strokes[: zero.shape[0], half + 4 : zero.shape[1] + 4] = zero[:, half:]
    right = strokes[: six.shape[0], zero.shape[1] + 3 :]
    np.maximum(right, six, out=right)
    picture = (_paper([two, strokes], [6]) * 255).astype(np.uint8)
    assert len(segment_digits(picture)) == 3  # "2", the left stroke, the right one + the 6
    assert Recognizer.load().predict(picture, number=True).number == "206"
    monkeypatch.setattr(nr, "_borrow", lambda *args: None)
    assert Recognizer.load().predict(picture, number=True).number != "206"


@pytest.mark.slow
def test_well_spaced_digits_are_read_as_written(mnist_test_split):
    picks = [3, 2, 1, 18, 4, 8, 11, 0, 61, 7]  # test digits 0..9
    parts = [_crop(mnist_test_split.images[i]) for i in picks]
    picture = _paper(parts, [8] * 9)
    found = nr.candidates(picture)
    assert found.splits  # wide digits were offered cut in two ...
    answer = Recognizer.load().predict((picture * 255).astype(np.uint8), number=True)
    assert answer.number == "0123456789"  # ... and left whole
