"""MNIST-style normalisation of user pictures, on digits drawn here with Pillow."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy import ndimage

from digitlab.errors import ImageError
from digitlab.vision import preprocess, strokes
from digitlab.vision.preprocess import (
    from_mnist_like,
    looks_mnist_like,
    to_mnist,
)


def draw(
    digit: str,
    *,
    height: int = 200,
    stroke: int | None = None,
    canvas: tuple[int, int] = (300, 300),
    centre: tuple[int, int] | None = None,
    ink: float = 0.0,
    paper: float = 1.0,
) -> np.ndarray:
    """A 0, 1 or 7 drawn with a pen of `stroke` px; canvas is (width, height)."""
    image = Image.new("F", canvas, paper)
    pen = ImageDraw.Draw(image)
    cx, cy = centre or (canvas[0] // 2, canvas[1] // 2)
    half = height / 2
    width = stroke or max(1, height // 10)
    if digit == "1":
        pen.line([(cx, cy - half), (cx, cy + half)], fill=ink, width=width)
    elif digit == "0":
        pen.ellipse(
            [cx - 0.6 * half, cy - half, cx + 0.6 * half, cy + half], outline=ink, width=width
        )
    elif digit == "7":
        corners = [
            (cx - 0.6 * half, cy - half),
            (cx + 0.6 * half, cy - half),
            (cx - 0.1 * half, cy + half),
        ]
        pen.line(corners, fill=ink, width=width, joint="curve")
    else:
        raise ValueError(digit)
    return np.asarray(image, dtype=np.float32)


def centre_of_mass(image: np.ndarray) -> tuple[float, float]:
    cy, cx = ndimage.center_of_mass(image.astype(np.float64))
    return float(cy), float(cx)


def box_size(image: np.ndarray) -> tuple[int, int]:
    """Height and width of the pixels at half intensity or more."""
    rows = np.flatnonzero((image >= 128).any(axis=1))
    cols = np.flatnonzero((image >= 128).any(axis=0))
    return int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def row_thickness(image: np.ndarray) -> float:
    """Pen width of an upright 1 in px: ink per row across its middle."""
    return float(np.median(image[9:19].sum(axis=1) / 255.0))


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Mean grey-level difference, allowing a 1-px shift: rounding the centre of mass of
    two nearly equal pictures can land one pixel apart."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    shifts = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    return min(float(np.abs(np.roll(a64, s, axis=(0, 1)) - b64).mean()) for s in shifts)


@pytest.mark.parametrize("digit", ["0", "1", "7"])
def test_mnist_layout_20px_box_and_centre_of_mass(digit: str) -> None:
    result = to_mnist(draw(digit))
    assert result.image.shape == (28, 28) and result.image.dtype == np.uint8
    assert not result.blank
    assert max(box_size(result.image)) in (19, 20, 21)
    cy, cx = centre_of_mass(result.image)
    assert abs(cy - 14) <= 1.0 and abs(cx - 14) <= 1.0
    assert result.image.max() >= 250  # white ink ...
    frame = np.concatenate([result.image[0], result.image[:, 0], result.image[:, -1]])
    assert frame.max() == 0  # ... on black (a top-heavy 7 may reach the last row, as in MNIST)


def test_aspect_ratio_is_kept() -> None:
    zero = to_mnist(draw("0")).image  # drawn 0.6 as wide as tall
    one = to_mnist(draw("1", height=200, stroke=20)).image
    assert box_size(zero)[0] == 20 and 11 <= box_size(zero)[1] <= 14
    assert box_size(one)[0] == 20 and box_size(one)[1] <= 4


@pytest.mark.parametrize("digit", ["0", "1", "7"])
def test_dark_on_light_and_light_on_dark_agree(digit: str) -> None:
    dark_on_light = to_mnist(draw(digit, ink=0.0, paper=1.0)).image
    light_on_dark = to_mnist(draw(digit, ink=1.0, paper=0.0)).image
    assert mean_abs_diff(dark_on_light, light_on_dark) < 1.0


def test_grey_paper_grey_ink_both_polarities() -> None:
    pencil = to_mnist(draw("7", ink=0.45, paper=0.8)).image
    chalk = to_mnist(draw("7", ink=0.7, paper=0.25)).image
    clean = to_mnist(draw("7")).image
    assert mean_abs_diff(pencil, clean) < 3.0
    assert mean_abs_diff(chalk, clean) < 3.0


def test_polarity_is_not_taken_from_a_corner_pixel() -> None:
    # The 7's bar starts in the top-left corner, so that corner pixel is ink.
    corner = draw("7", height=200, canvas=(200, 215), centre=(60, 105), stroke=20)
    assert corner[0, 0] < 0.5
    result = to_mnist(corner)
    assert mean_abs_diff(result.image, to_mnist(draw("7", stroke=20)).image) < 3.0


def test_off_centre_digit_is_recentred_and_located() -> None:
    clean = to_mnist(draw("0", height=100, canvas=(300, 300))).image
    result = to_mnist(draw("0", height=100, canvas=(300, 300), centre=(70, 220)))
    assert mean_abs_diff(result.image, clean) < 1.0
    assert result.bbox is not None
    y0, x0, y1, x1 = result.bbox
    # Ellipse from (40, 170) to (100, 270) drawn with a 10 px pen.
    assert abs(y0 - 170) <= 2 and abs(y1 - 271) <= 2
    assert abs(x0 - 40) <= 2 and abs(x1 - 101) <= 2


def test_shadow_gradient_and_noise_are_removed() -> None:
    clean = to_mnist(draw("7", ink=0.1, paper=0.9)).image
    photo = draw("7", ink=0.1, paper=0.9)
    yy, xx = np.mgrid[0:300, 0:300] / 300.0
    photo = photo * (0.45 + 0.55 * xx)  # light falls off to the left
    photo = np.where(yy > 0.6, photo * 0.6, photo)  # a hard shadow across the bottom
    photo += np.random.default_rng(0).normal(0, 0.02, photo.shape)  # sensor noise
    result = to_mnist(np.clip(photo, 0, 1).astype(np.float32))
    assert not result.blank
    assert box_size(result.image) == box_size(clean)
    assert mean_abs_diff(result.image, clean) < 6.0


def _half_in_shadow(image: np.ndarray, share: float, dim: float, seed: int) -> np.ndarray:
    """A hard diagonal shadow (blurred edge) over `share` of the page, dimming it to `dim`."""
    yy, xx = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    shade = (xx / image.shape[1] + yy / image.shape[0] > 2 * (1 - share)).astype(np.float32)
    shade = ndimage.gaussian_filter(shade, 8)
    photo = image * (1 - (1 - dim) * shade)
    photo += np.random.default_rng(seed).normal(0, 0.01, photo.shape)
    return np.clip(photo, 0, 1).astype(np.float32)


@pytest.mark.parametrize(("share", "dim"), [(0.5, 0.4), (0.5, 0.55), (0.6, 0.4), (0.6, 0.55)])
def test_digit_beside_a_shadow_over_half_the_page(share: float, dim: float) -> None:
    # Lit paper and shadow make the paper's spread so wide that nothing stood out above
    # five times it: these digits were "no digit found". A finer floor finds them, and
    # accepts only strong, thin strokes clear of the edges, so the same page without the
    # digit stays blank.
    digit = draw("7", ink=0.15, paper=0.85, height=120, centre=(110, 120))
    clean = to_mnist(digit).image
    result = to_mnist(_half_in_shadow(digit, share, dim, seed=0))
    assert not result.blank
    assert box_size(result.image) == box_size(clean)
    assert mean_abs_diff(result.image, clean) < 4.0
    for seed in range(3):
        page = np.full((300, 300), 0.85, np.float32)
        assert to_mnist(_half_in_shadow(page, share, dim, seed)).blank


def test_paper_texture_and_specks_are_dropped() -> None:
    rng = np.random.default_rng(1)
    image = draw("1", stroke=20)
    image = image + ndimage.gaussian_filter(rng.normal(0, 0.05, image.shape), 2)
    for y, x in rng.integers(10, 290, size=(40, 2)):
        image[y : y + 2, x : x + 2] = 0.0  # pepper specks, 2x2 px each
    result = to_mnist(np.clip(image, 0, 1).astype(np.float32))
    clean = to_mnist(draw("1", stroke=20))
    assert box_size(result.image) == box_size(clean.image)
    assert mean_abs_diff(result.image, clean.image) < 2.0


@pytest.mark.parametrize(
    ("height", "canvas", "stroke"), [(10, (40, 40), 1), (2000, (2100, 2100), 150)]
)
def test_tiny_and_huge_digits(height: int, canvas: tuple[int, int], stroke: int) -> None:
    result = to_mnist(draw("0", height=height, canvas=canvas, stroke=stroke))
    assert not result.blank
    assert max(box_size(result.image)) in (19, 20, 21)
    cy, cx = centre_of_mass(result.image)
    assert abs(cy - 14) <= 1.0 and abs(cx - 14) <= 1.0
    assert result.bbox is not None
    assert max(result.bbox[2] - result.bbox[0], result.bbox[3] - result.bbox[1]) >= height


def test_box_of_a_huge_picture_is_in_input_pixels() -> None:
    # 2100 px is reduced before cleaning; the box must still be in the caller's pixels.
    result = to_mnist(draw("0", height=2000, canvas=(2100, 2100), stroke=150))
    assert result.bbox is not None
    expected = (50, 450, 2051, 1651)  # the ellipse's outline, drawn inside its box
    assert all(abs(got - want) <= 4 for got, want in zip(result.bbox, expected, strict=True))


@pytest.mark.parametrize(
    ("height", "stroke"),
    [(400, 1), (400, 2), (200, 20), (200, 60), (400, 140), (28, 2)],
    ids=["hairline", "thin", "pen", "marker", "blob", "small"],
)
def test_stroke_width_lands_in_mnist_range(height: int, stroke: int) -> None:
    # MNIST's upright 1s are 1.8-5 px wide per row; unnormalised, these would be
    # 0.05 px (hairline) to 7 px (blob) wide.
    canvas = (height + 100, height + 100)
    image = to_mnist(draw("1", height=height, stroke=stroke, canvas=canvas)).image
    assert 1.5 <= row_thickness(image) <= 3.6


def test_thick_and_thin_zeros_keep_their_hole() -> None:
    for stroke in (1, 45):
        image = to_mnist(draw("0", height=300, stroke=stroke, canvas=(400, 400))).image
        ink = image >= 128
        hole = ndimage.binary_fill_holes(ink) & ~ink
        assert hole.sum() >= 40, stroke  # a 0, not a blob or an open curve
        assert 60 <= image.sum() / 255 <= 160, stroke  # MNIST 0s hold 85-200 px of ink


def test_same_digit_at_any_scale_gives_the_same_input() -> None:
    small = to_mnist(draw("7", height=60, canvas=(90, 90), stroke=6)).image
    large = to_mnist(draw("7", height=600, canvas=(700, 700), stroke=60)).image
    assert mean_abs_diff(small, large) < 6.0


@pytest.mark.parametrize(
    "image",
    [
        np.ones((100, 100), np.float32),
        np.zeros((100, 100), np.float32),
        np.full((64, 64), 0.6, np.float32),
    ],
    ids=["white", "black", "grey"],
)
def test_blank_pictures(image: np.ndarray) -> None:
    result = to_mnist(image)
    assert result.blank and result.bbox is None
    assert result.image.shape == (28, 28) and result.image.max() == 0


def test_blank_paper_photo_with_gradient_noise_and_grain() -> None:
    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[0:400, 0:300] / 400.0
    paper = 0.5 + 0.4 * xx + 0.1 * yy
    paper += ndimage.gaussian_filter(rng.normal(0, 0.05, paper.shape), 3)
    paper += rng.normal(0, 0.02, paper.shape)
    assert to_mnist(np.clip(paper, 0, 1).astype(np.float32)).blank


def test_integer_rgb_and_0_255_inputs_are_accepted() -> None:
    grey = draw("1", stroke=20)
    expected = to_mnist(grey).image
    as_uint8 = np.round(grey * 255).astype(np.uint8)
    as_rgb = np.repeat(as_uint8[..., None], 3, axis=2)
    as_uint16 = as_uint8.astype(np.uint16) * 257
    for variant in (as_uint8, as_rgb, as_uint16, as_uint8[..., None], grey * 255.0):
        assert mean_abs_diff(to_mnist(variant).image, expected) < 1.0


def test_bad_arrays_raise_image_error() -> None:
    with pytest.raises(ImageError, match="expected a grey image"):
        to_mnist(np.zeros((5, 5, 7), np.float32))
    with pytest.raises(ImageError, match="expected a grey image"):
        to_mnist(np.zeros((1, 30), np.float32))


def mnist_like_seven() -> np.ndarray:
    image = np.zeros((28, 28), np.uint8)
    image[5:8, 7:21] = 255
    for row in range(8, 24):
        col = 20 - (row - 8) // 2
        image[row, col - 1 : col + 2] = 255
        image[row, col - 2] = 90  # anti-aliased edge
    return image


def test_from_mnist_like_passes_through_untouched() -> None:
    seven = mnist_like_seven()
    result = from_mnist_like(seven)
    assert np.array_equal(result.image, seven) and result.image is not seven
    assert not result.blank and result.bbox == (5, 7, 24, 22)
    as_float = from_mnist_like(seven.astype(np.float32) / 255.0)
    assert np.array_equal(as_float.image, seven)
    assert from_mnist_like(np.zeros((28, 28), np.uint8)).blank
    with pytest.raises(ImageError, match="28x28"):
        from_mnist_like(np.zeros((32, 32), np.uint8))


def test_looks_mnist_like() -> None:
    assert looks_mnist_like(mnist_like_seven())
    assert not looks_mnist_like(255 - mnist_like_seven())  # black on white
    assert not looks_mnist_like(mnist_like_seven().astype(np.float32))
    assert not looks_mnist_like(np.zeros((28, 28), np.uint8))  # empty


# --- the short path for flat paper (canvas drawings) ---------------------------------------


@pytest.mark.parametrize(
    ("digit", "stroke", "ink", "paper"),
    [("0", 4, 0.0, 1.0), ("1", 30, 0.0, 1.0), ("7", 12, 1.0, 0.0), ("0", 20, 0.2, 0.7)],
)
def test_flat_paper_short_path_agrees_with_the_lighting_analysis(
    digit: str, stroke: int, ink: float, paper: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    picture = draw(digit, stroke=stroke, ink=ink, paper=paper)
    assert preprocess._flat_paper_residual(picture) is not None
    short = to_mnist(picture).image
    monkeypatch.setattr(preprocess, "_flat_paper_residual", lambda grey: None)
    full = to_mnist(picture).image
    assert mean_abs_diff(short, full) < 1.0


def test_photos_never_take_the_flat_paper_path() -> None:
    rng = np.random.default_rng(3)
    drawn = draw("7", ink=0.1, paper=0.9)
    noisy = np.clip(drawn + rng.normal(0, 0.02, drawn.shape), 0, 1).astype(np.float32)
    assert preprocess._flat_paper_residual(noisy) is None
    # Over-exposed white paper (clipped at 1.0) with a shadow across the bottom: most pixels
    # sit at one level, but the shadow is not ink and reaches the border.
    shadowed = draw("7").copy()
    shadowed[200:] *= 0.6
    assert preprocess._flat_paper_residual(shadowed) is None
    result = to_mnist(shadowed)
    assert box_size(result.image) == box_size(to_mnist(draw("7")).image)


@pytest.mark.parametrize(("digit", "canvas", "ink", "paper"), [
    ("7", (300, 300), 0.0, 1.0),  # 360 px tall on 300: the stem runs off the top and bottom
    ("1", (300, 200), 0.07, 1.0),  # 360 px on 200
    ("7", (300, 300), 1.0, 0.1),  # light ink on dark paper
])
def test_strokes_crossing_the_border_take_the_flat_paper_path(
    digit: str, canvas: tuple[int, int], ink: float, paper: float,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A drawing that runs off the page (a big digit on the drawing page) is still flat
    paper: each stroke crosses the border as a short run of ink, and the lighting analysis
    finds the same ink."""
    picture = draw(digit, height=360, stroke=36, canvas=canvas, ink=ink, paper=paper)
    edge = np.concatenate([picture[0], picture[-1], picture[:, 0], picture[:, -1]])
    assert np.count_nonzero(np.abs(edge - paper) > 0.01) > 0.05 * edge.size  # was declined
    assert preprocess._flat_paper_residual(picture) is not None
    short = to_mnist(picture)
    monkeypatch.setattr(preprocess, "_flat_paper_residual", lambda grey: None)
    full = to_mnist(picture)
    assert short.bbox == full.bbox
    assert mean_abs_diff(short.image, full.image) < 1.0


def test_what_lies_along_the_border_is_not_a_stroke_crossing_it() -> None:
    """Off-paper runs along a side that are longer than a stroke is wide (a dark band, a
    table's edge) or never as dark as ink (a soft shadow) still send a picture to the
    lighting analysis."""
    band = draw("7").copy()
    band[-12:, :120] = 0.0  # 120 px along a 300 px side: wider than a stroke
    assert preprocess._flat_paper_residual(band) is None
    shade = draw("7").copy()
    shade[-12:, :60] = 0.85  # short, but paper-grey: no ink reaches the edge there
    assert preprocess._flat_paper_residual(shade) is None
    stroke = draw("7").copy()
    stroke[-12:, :60] = 0.0  # the same run in ink: a stroke crossing
    assert preprocess._flat_paper_residual(stroke) is not None


def test_flat_paper_without_ink_is_blank() -> None:
    assert to_mnist(np.full((140, 140), 1.0, np.float32)).blank
    assert to_mnist(np.full((140, 140), 0.3, np.float32)).blank


def test_faint_stroke_kept_where_the_lighting_left_a_gradient(monkeypatch) -> None:
    """A shadow's leftover gradient widens the paper's spread; the ink floor comes from the
    pixel-to-pixel noise instead, so a fainter arm of the stroke is not lost."""
    from digitlab.vision import preprocess

    rng = np.random.default_rng(0)
    rows = np.linspace(0.0, 0.35, 200, dtype=np.float32)[:, None]
    residual = np.repeat(rows, 200, axis=1) + rng.normal(0, 0.01, (200, 200)).astype(np.float32)
    blank = residual.copy()
    residual[40:160, 60:68] = 0.95  # a firm stroke down ...
    residual[40:48, 68:140] = 0.7  # ... and a fainter arm across, above half contrast
    found = preprocess._threshold(residual)
    assert found is not None
    arm = found[1][40:48, 80:140]
    assert arm.mean() > 0.9  # the arm is ink
    assert found[1][170:, :].sum() == 0  # the gradient is not
    assert preprocess._threshold(blank) is None  # and a gradient alone is no ink
    # With the floor from the paper's spread alone (as before), the arm was lost.
    monkeypatch.setattr(preprocess, "_pixel_noise", lambda r: float("inf"))
    found = preprocess._threshold(residual)
    assert found is not None and found[1][40:48, 80:140].mean() < 0.1


# --- short cuts against their plain definitions -----------------------------------------


def _zhang_suen_reference(mask: np.ndarray) -> np.ndarray:
    """Zhang & Suen thinning computed over the whole picture at every sub-iteration (each
    pixel's neighbourhood code by correlation), as the preprocessing first did it."""
    bits = np.zeros((3, 3), np.uint8)
    for bit, (dy, dx) in enumerate(strokes._NEIGHBOURS):
        bits[1 + dy, 1 + dx] = 1 << bit
    img = np.pad(mask.astype(np.uint8), 1)
    changed = True
    while changed:
        changed = False
        for table in strokes._THIN_TABLES:
            code = ndimage.correlate(img, bits, mode="constant")
            removable = (img == 1) & table[code]
            if removable.any():
                img[removable] = 0
                changed = True
    return img[1:-1, 1:-1].astype(bool)


def test_mnist_like_border_test_is_numpys_median() -> None:
    rng = np.random.default_rng(5)
    for zeros in range(0, 225):
        arr = np.zeros((28, 28), np.uint8)
        arr[10:18, 10:18] = 200
        border = np.zeros(224, np.uint8)
        border[zeros:] = rng.integers(1, 256, 224 - zeros)
        arr[:2] = border[:56].reshape(2, 28)
        arr[-2:] = border[56:112].reshape(2, 28)
        arr[2:-2, :2] = border[112:160].reshape(24, 2)
        arr[2:-2, -2:] = border[160:208].reshape(24, 2)
        edge = np.concatenate([arr[:2], arr[-2:], arr[:, :2].T, arr[:, -2:].T], axis=None)
        assert preprocess.looks_mnist_like(arr) == bool(np.median(edge) == 0), zeros


def test_thinning_matches_the_whole_picture_reference() -> None:
    """Looking only at ink pixels gives the same skeleton, pixel for pixel: random blobs of
    every size (touching the edges too) and thick drawn digits."""
    rng = np.random.default_rng(4)
    masks = [ndimage.binary_dilation(rng.random((h, w)) > 0.85, iterations=int(k))
             for h, w, k in zip(rng.integers(1, 45, 300), rng.integers(1, 45, 300),
                                rng.integers(0, 4, 300), strict=True)]
    masks += [draw(d, stroke=s) < 0.5 for d in "017" for s in (6, 24, 60)]
    for mask in masks:
        assert np.array_equal(strokes._thin(mask), _zhang_suen_reference(mask))


def test_drop_specks_matches_the_area_rule_everywhere() -> None:
    """Components under 2% of the largest (or single pixels) go; the short cut for a lone
    stroke must give the same mask: one blob, one pixel, blobs with specks, nothing."""
    rng = np.random.default_rng(8)
    masks = [np.zeros((9, 9), bool)]
    lone = np.zeros((9, 9), bool)
    lone[4, 4] = True
    masks.append(lone)
    for _ in range(300):
        h, w = (int(v) for v in rng.integers(2, 40, 2))
        mask = rng.random((h, w)) > rng.uniform(0.5, 0.99)
        masks.append(ndimage.binary_dilation(mask, iterations=int(rng.integers(0, 3))))
    for mask in masks:
        labels, _ = ndimage.label(mask, structure=np.ones((3, 3)))
        areas = np.bincount(labels.ravel())
        areas[0] = 0
        keep = areas >= max(2.0, 0.02 * areas.max())
        keep[0] = False
        assert np.array_equal(preprocess._drop_specks(mask), keep[labels])
