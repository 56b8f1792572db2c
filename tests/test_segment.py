"""Splitting a written number into digits, on numbers drawn here with Pillow."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy import ndimage

from digitlab.vision.preprocess import to_mnist
from digitlab.vision.segment import segment_digits

HEIGHT = 80  # digit height in px
PEN = 8
CANVAS_HEIGHT = 140
MIDDLE = CANVAS_HEIGHT // 2


def cut(grey: np.ndarray) -> list[np.ndarray]:
    """The digits' crops segment_digits cuts, left to right."""
    return [digit.image for digit in segment_digits(grey)]


def glyph(pen: ImageDraw.ImageDraw, digit: str, cx: float, ink: float = 0.0) -> None:
    """Draw one digit centred at (cx, MIDDLE); "7b", "5b", "4b" are drawn broken in pieces."""
    h = HEIGHT / 2
    top, bottom = MIDDLE - h, MIDDLE + h
    line = {"fill": ink, "width": PEN}
    if digit == "0":
        pen.ellipse([cx - 0.7 * h, top, cx + 0.7 * h, bottom], outline=ink, width=PEN)
    elif digit == "1":
        pen.line([(cx, top), (cx, bottom)], **line)
    elif digit == "7":
        pen.line([(cx - 0.7 * h, top), (cx + 0.7 * h, top), (cx - 0.1 * h, bottom)], **line)
    elif digit == "7b":  # the diagonal starts below the bar, not touching it
        pen.line([(cx - 0.7 * h, top), (cx + 0.7 * h, top)], **line)
        pen.line([(cx + 0.65 * h, top + PEN + 6), (cx - 0.1 * h, bottom)], **line)
    elif digit == "5b":  # the top bar lifted off the body
        pen.line([(cx - 0.45 * h, top), (cx + 0.5 * h, top)], **line)
        pen.line([(cx - 0.45 * h, top + PEN + 6), (cx - 0.45 * h, MIDDLE - 0.1 * h)], **line)
        box = [cx - 0.5 * h, MIDDLE - 0.3 * h, cx + 0.55 * h, bottom]
        pen.arc(box, start=200, end=150, fill=ink, width=PEN)
    elif digit == "4b":  # the upright is broken where the bar crosses it
        pen.line([(cx - 0.05 * h, top), (cx - 0.65 * h, MIDDLE + 0.2 * h)], **line)
        pen.line([(cx - 0.65 * h, MIDDLE + 0.2 * h), (cx + 0.65 * h, MIDDLE + 0.2 * h)], **line)
        upright = cx + 0.25 * h
        pen.line([(upright, top), (upright, MIDDLE + 0.2 * h - PEN - 5)], **line)
        pen.line([(upright, MIDDLE + 0.2 * h + PEN + 5), (upright, bottom)], **line)
    else:
        raise ValueError(digit)


def number(
    digits: list[str], centres: list[float], width: int, ink: float = 0.0, paper: float = 1.0
) -> np.ndarray:
    image = Image.new("F", (width, CANVAS_HEIGHT), paper)
    pen = ImageDraw.Draw(image)
    for digit, cx in zip(digits, centres, strict=True):
        glyph(pen, digit, cx, ink)
    return np.asarray(image, dtype=np.float32)


def spaced(digits: list[str], step: float = 70) -> np.ndarray:
    """Digits side by side with clear gaps."""
    centres = [50 + step * i for i in range(len(digits))]
    return number(digits, centres, width=int(centres[-1] + 50))


TEMPLATES = {
    name[0]: to_mnist(number([name], [60], 120)).image.astype(np.float64)
    for name in ["0", "1", "7", "4b", "5b"]
}


def read(crops: list[np.ndarray]) -> str:
    """Name each crop by the drawn digit it matches best (normalised correlation)."""

    def score(a: np.ndarray, b: np.ndarray) -> float:
        a, b = a - a.mean(), b - b.mean()
        return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum() + 1e-9))

    names = []
    for crop in crops:
        image = to_mnist(crop).image.astype(np.float64)
        names.append(max(TEMPLATES, key=lambda d: score(image, TEMPLATES[d])))
    return "".join(names)


def test_separate_digits_come_out_left_to_right() -> None:
    crops = cut(spaced(["1", "0", "7", "0", "1"]))
    assert len(crops) == 5
    assert read(crops) == "10701"


def test_crops_are_white_ink_on_a_black_margin() -> None:
    for crop in cut(spaced(["7", "0"])):
        assert crop.dtype == np.float32 and crop.ndim == 2
        assert crop.max() > 0.95
        margin = np.concatenate([crop[:2].ravel(), crop[-2:].ravel(), crop[:, :2].ravel()])
        assert margin.max() == 0.0
        # A crop holds one digit: a 0 or 7 drawn in one stroke stays one piece.
        assert ndimage.label(crop > 0.5, structure=np.ones((3, 3)))[1] == 1


def pieces(image: np.ndarray) -> int:
    return ndimage.label(image < 0.5, structure=np.ones((3, 3)))[1]


@pytest.mark.parametrize(
    ("digits", "step", "expected"),
    [
        (["0", "0"], 52, "00"),
        (["0", "0", "0"], 52, "000"),
        (["7", "0"], 48, "70"),
        (["0", "4b"], 50, "04"),
    ],
)
def test_touching_digits_are_split(digits: list[str], step: int, expected: str) -> None:
    # Digits are 56 px wide, so centres `step` px apart overlap by a few px of ink.
    centres = [50 + step * i for i in range(len(digits))]
    image = number(digits, centres, width=int(centres[-1] + 50))
    alone = sum(pieces(number([d], [60], 120)) for d in digits)
    assert pieces(image) < alone  # really touching
    assert read(cut(image)) == expected


@pytest.mark.parametrize("digit", ["7b", "5b", "4b"])
def test_broken_digit_is_one_digit(digit: str) -> None:
    image = number([digit], [60], 120)
    assert pieces(image) >= 2  # really broken
    crops = cut(image)
    assert len(crops) == 1
    assert read(crops) == digit[0]


def test_broken_digits_among_others() -> None:
    crops = cut(spaced(["1", "7b", "0", "5b", "4b", "1"], step=75))
    assert read(crops) == "170541"


def test_wide_single_digit_is_not_split() -> None:
    image = Image.new("L", (200, 100), 255)
    # A 7 with a long bar and a slanted stem: 150 px wide, 70 px tall.
    ImageDraw.Draw(image).line([(25, 15), (175, 15), (95, 85)], fill=0, width=7)
    assert len(cut(np.asarray(image))) == 1


def test_dots_and_specks_are_not_digits() -> None:
    image = spaced(["1", "0", "7"], step=90)
    pen = Image.fromarray(image)
    draw = ImageDraw.Draw(pen)
    draw.ellipse([88, 100, 98, 110], fill=0.0)  # a decimal point between 1 and 0
    draw.point([(20, 10), (150, 130), (230, 5)], fill=0.0)  # dust
    crops = cut(np.asarray(pen, dtype=np.float32))
    assert read(crops) == "107"


def test_a_loose_stroke_goes_to_the_digit_it_starts_over() -> None:
    # A 5 whose bar came loose and runs on to the right, past its body: too short to be a
    # digit, too little over the body to join it by overlap; it was dropped as a dash.
    h = HEIGHT / 2
    top = MIDDLE - h
    cx = 60
    image = Image.new("F", (260, CANVAS_HEIGHT), 1.0)
    pen = ImageDraw.Draw(image)
    line = {"fill": 0.0, "width": PEN}
    pen.line([(cx - 0.45 * h, top + PEN + 6), (cx - 0.45 * h, MIDDLE - 0.1 * h)], **line)
    pen.arc([cx - 0.5 * h, MIDDLE - 0.3 * h, cx + 0.55 * h, MIDDLE + h], start=200, end=150,
            fill=0.0, width=PEN)
    pen.line([(cx + 0.1 * h, top), (cx + 1.6 * h, top)], **line)  # the bar
    glyph(pen, "1", cx + 2.4 * h)
    found = segment_digits(np.asarray(image, dtype=np.float32))
    assert len(found) == 2
    five, one = found
    assert five.bbox[1] < cx - 0.4 * h and five.bbox[3] >= cx + 1.6 * h  # the bar is the 5's
    assert five.bbox[0] <= top - PEN // 2 + 1
    assert one.bbox[1] > cx + 1.9 * h  # and not the 1's


def test_an_underline_is_not_part_of_a_digit() -> None:
    image = spaced(["1", "0", "7"], step=60)
    pen = Image.fromarray(image)
    under = MIDDLE + HEIGHT // 2 + 20
    ImageDraw.Draw(pen).line([(20, under), (200, under)], fill=0.0, width=5)
    found = segment_digits(np.asarray(pen, dtype=np.float32))
    assert read([d.image for d in found]) == "107"
    assert all(d.bbox[2] < under - 2 for d in found)


def test_light_ink_on_dark_ground() -> None:
    centres = [50, 120, 190]
    image = number(["0", "1", "7"], centres, width=240, ink=1.0, paper=0.0)
    assert read(cut(image)) == "017"


def test_photo_of_a_number_with_shadow_and_noise() -> None:
    image = spaced(["7", "1", "0", "4b"]) * 0.8 + 0.1
    yy, xx = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    image *= 0.5 + 0.5 * xx / image.shape[1]  # light falls off to the left
    image += np.random.default_rng(3).normal(0, 0.02, image.shape)
    assert read(cut(np.clip(image, 0, 1).astype(np.float32))) == "7104"


def test_boxes_locate_each_digit_in_the_input() -> None:
    image = spaced(["1", "0", "7"])
    digits = segment_digits(image)
    assert len(digits) == 3
    for digit, centre in zip(digits, [50, 120, 190], strict=True):
        y0, x0, y1, x1 = digit.bbox
        assert x0 < centre < x1
        assert abs(y0 - (MIDDLE - HEIGHT / 2)) <= PEN and abs(y1 - (MIDDLE + HEIGHT / 2)) <= PEN
    lefts = [d.bbox[1] for d in digits]
    assert lefts == sorted(lefts)


def test_blank_picture_has_no_digits() -> None:
    assert cut(np.ones((100, 300), np.float32)) == []
    noise = np.random.default_rng(4).normal(0.8, 0.02, (100, 300))
    assert cut(np.clip(noise, 0, 1).astype(np.float32)) == []


def test_path_step_picks_as_argmin_over_the_three_moves() -> None:
    """The path search's step against the stacked argmin it replaced: ties (integer costs)
    and unreachable (infinite) cells included."""
    from digitlab.vision.segment import _step

    rng = np.random.default_rng(3)
    for _ in range(300):
        w, k = (int(v) for v in rng.integers(1, 12, 2))
        cost = rng.integers(0, 4, (w, k)).astype(float)
        cost[rng.random((w, k)) < 0.2] = np.inf
        options = np.full((3, w, k), np.inf)
        options[0] = cost
        options[1, :, 1:] = cost[:, :-1] + 0.5
        options[2, :, :-1] = cost[:, 1:] + 0.5
        pick = options.argmin(axis=0)
        moves, best = _step(cost, 0.5)
        assert np.array_equal(moves, pick)
        assert np.array_equal(best, np.take_along_axis(options, pick[None], axis=0)[0])
