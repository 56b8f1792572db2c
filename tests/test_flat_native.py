"""The compiled flat-paper path (vision/_flat.c) against the Python steps it replaces.

`to_mnist` first offers a picture to the compiled code; whatever it answers must be, bit
for bit, what the NumPy/SciPy/Pillow steps give, and what it declines they still do.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy import ndimage

from conftest import require_native
from digitlab.vision import preprocess
from digitlab.vision.preprocess import distance_to_zero, resize, to_mnist


@pytest.fixture(scope="module", autouse=True)
def built() -> None:
    require_native()


def python_steps(grey: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> preprocess.Preprocessed:
    with monkeypatch.context() as m:
        m.setattr(preprocess, "_flat_to_mnist", lambda grey: None)
        return to_mnist(grey)


def compare(greys: list[np.ndarray], monkeypatch: pytest.MonkeyPatch) -> int:
    """Assert equal answers; returns how many pictures the compiled path took."""
    taken = 0
    for k, grey in enumerate(greys):
        fast = preprocess._flat_to_mnist(grey)
        if fast is None:
            continue
        taken += 1
        slow = python_steps(grey, monkeypatch)
        assert fast.blank == slow.blank, k
        assert fast.bbox == slow.bbox, k
        assert fast.image.dtype == np.uint8 and fast.image.shape == (28, 28)
        assert np.array_equal(fast.image, slow.image), (k, np.abs(
            fast.image.astype(int) - slow.image).max())
    return taken


def pen(shape: tuple[int, int], strokes, *, width: int, ink: float, paper: float,
        seed: int = 0, specks: int = 0) -> np.ndarray:
    """A drawing on even paper: `strokes` are polylines in (x, y) pixels."""
    image = Image.new("F", (shape[1], shape[0]), paper)
    draw = ImageDraw.Draw(image)
    for line in strokes:
        draw.line(line, fill=ink, width=width, joint="curve")
    rng = np.random.default_rng(seed)
    for _ in range(specks):
        x, y = rng.integers(0, shape[1] - 2), rng.integers(0, shape[0] - 2)
        draw.rectangle([x, y, x + rng.integers(0, 2), y + rng.integers(0, 2)], fill=ink)
    return np.array(image, dtype=np.float32)


def drawings(count: int, seed: int, *, overhang: float = 0.0) -> list[np.ndarray]:
    """Random pen drawings: sizes, widths, polarity, grey levels, specks, near the edges
    (with overhang, up to that share of a side past them)."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(count):
        h, w = (int(v) for v in rng.integers(24, 260, 2))
        points = rng.integers(0, 1 << 16, (int(rng.integers(2, 7)), 2)) / (1 << 16)
        margin = rng.uniform(-overhang, 0.3)
        line = [(float(margin * w + p[0] * (1 - 2 * margin) * w),
                 float(margin * h + p[1] * (1 - 2 * margin) * h)) for p in points]
        strokes = [line]
        if rng.random() < 0.3:  # a second stroke, e.g. the bar of a 4 or a 7
            strokes.append([(w * 0.3, h * 0.5), (w * 0.7, h * 0.5)])
        width = int(rng.integers(1, max(2, min(h, w) // 6)))
        dark = rng.random() < 0.7
        paper, ink = (1.0, rng.uniform(0.0, 0.5)) if dark else (rng.uniform(0.0, 0.2), 1.0)
        grey = pen((h, w), strokes, width=width, ink=ink, paper=paper, seed=k,
                   specks=int(rng.integers(0, 4)))
        if rng.random() < 0.3:  # stored in 8 bits, as files are
            grey = np.round(grey * 255) / np.float32(255)
        if rng.random() < 0.1:  # 0..255 floats: as_grey scales them
            grey = grey * np.float32(255)
        out.append(np.ascontiguousarray(grey, dtype=np.float32))
    return out


def test_random_drawings_match_the_python_steps(monkeypatch) -> None:
    greys = drawings(400, seed=1)
    taken = compare(greys, monkeypatch)
    assert taken >= 250, taken  # most drawings are the compiled path's to answer


def test_drawings_off_the_edges_are_read_as_the_python_steps_read_them(monkeypatch) -> None:
    """Strokes that run off the picture: the compiled path takes a picture exactly when the
    Python steps find flat paper (strokes crossing the border in short runs of ink), and
    answers as they do."""
    greys = drawings(300, seed=5, overhang=0.5)
    for k, grey in enumerate(greys):
        flat = preprocess._flat_paper_residual(preprocess.as_grey(grey)) is not None
        assert (preprocess._flat_to_mnist(grey) is not None) == flat, k
    crossing = [g for g in greys if np.count_nonzero(np.concatenate(
        [g[0], g[-1], g[:, 0], g[:, -1]]) != np.median(g)) > 0.05 * 2 * sum(g.shape)]
    assert len(crossing) >= 60, len(crossing)
    assert compare(crossing, monkeypatch) >= 25  # none before such runs counted as paper


@pytest.mark.slow
def test_mnist_digits_drawn_as_the_page_sends_them(mnist_test_split, monkeypatch) -> None:
    greys = []
    for k, image in enumerate(mnist_test_split.images[:300]):
        side = (140, 100, 280)[k % 3]
        picture = Image.fromarray(255 - image).resize((side, side), Image.BILINEAR)
        ink = (17, 0, 90)[k % 3]
        levels = np.asarray(picture, np.float32) / 255.0
        greys.append(np.round(ink + levels * (255 - ink)).astype(np.float32) / np.float32(255))
    taken = compare(greys, monkeypatch)
    assert taken >= 240, taken
    # ... and from the 8-bit pixels serve hands over; inverted too (light ink on dark
    # paper: the mask then takes the values above a cut, not below one)
    eight_bit = [np.round(grey * 255).astype(np.uint8) for grey in greys]
    eight_bit += [255 - pixels for pixels in eight_bit[:150]]
    for k, pixels in enumerate(eight_bit):
        fast = preprocess._flat_to_mnist(pixels)
        floats = preprocess._flat_to_mnist(pixels.astype(np.float32) / np.float32(255))
        assert (fast is None) == (floats is None), k
        if fast is not None:
            assert (fast.blank, fast.bbox) == (floats.blank, floats.bbox), k
            assert np.array_equal(fast.image, floats.image), k


def test_eight_bit_pixels_read_as_their_floats(monkeypatch) -> None:
    """uint8 pixels (a decoded PNG) go in as they are, and the answer is the one for their
    float32 v / 255, the compiled path's and the Python steps' (which take uint8 too), on
    drawings of every kind, random pixels and pictures the compiled path declines."""
    rng = np.random.default_rng(11)
    pictures = [np.round(np.clip(g, 0, 1) * 255).astype(np.uint8) for g in drawings(150, seed=3)]
    pictures += [255 - p for p in pictures[:40]]  # light ink on dark paper too
    pictures += [rng.integers(0, 256, (int(h), int(w)), dtype=np.uint8)
                 for h, w in rng.integers(2, 90, (40, 2))]
    paper = np.full((120, 120), 250, np.uint8)
    paper[30:90, 55:62] = 20
    pictures += [paper, 255 - paper, np.zeros((30, 30), np.uint8), np.full((2, 2), 255, np.uint8)]
    ramp = np.tile(np.linspace(60, 250, 160).astype(np.uint8), (160, 1))  # uneven paper
    ramp[40:120, 75:82] = 0
    pictures.append(ramp)
    answered = declined = 0
    for k, pixels in enumerate(pictures):
        floats = pixels.astype(np.float32) / 255.0
        fast, via_floats = preprocess._flat_to_mnist(pixels), preprocess._flat_to_mnist(floats)
        assert (fast is None) == (via_floats is None), k
        if fast is None:
            declined += 1
            continue
        answered += 1
        slow = python_steps(pixels, monkeypatch)
        for other in (via_floats, slow):
            assert (fast.blank, fast.bbox) == (other.blank, other.bbox), k
            assert np.array_equal(fast.image, other.image), k
    assert answered >= 120 and declined >= 2, (answered, declined)
    done = to_mnist(ramp)  # declined: the Python steps read the pixels
    assert np.array_equal(done.image, to_mnist(ramp.astype(np.float32) / 255.0).image)


def test_edge_cases_match(monkeypatch) -> None:
    blank = np.ones((140, 140), np.float32)
    one_dot = blank.copy()
    one_dot[70, 70] = 0.0
    at_edge = pen((100, 100), [[(0, 0), (0, 99)]], width=6, ink=0.0, paper=1.0)
    faint = pen((140, 140), [[(40, 20), (90, 120)]], width=8, ink=0.9, paper=1.0)
    with_nan = pen((120, 90), [[(45, 20), (45, 100)]], width=9, ink=0.0, paper=1.0)
    with_nan[0, :5] = np.nan
    with_nan[-1, -3:] = np.inf
    tiny = pen((6, 6), [[(3, 0), (3, 5)]], width=1, ink=0.0, paper=1.0)
    line = pen((60, 200), [[(10, 30), (190, 30)]], width=2, ink=0.0, paper=1.0)
    greys = [blank, one_dot, at_edge, faint, with_nan, tiny, line]
    compare(greys, monkeypatch)
    assert preprocess._flat_to_mnist(blank).blank  # answered, not declined


def test_odd_arrays_match(monkeypatch) -> None:
    """Whatever an array holds (dots, bars, grain, gradients, NaN, infinities, negative or
    0..255 values, a few pixels), an answer from the compiled path is the Python one."""
    rng = np.random.default_rng(7)
    greys = []
    for k in range(900):
        kind = k % 6
        h, w = (int(v) for v in rng.integers(2, 120 if kind else 12, 2))
        paper = float(rng.choice([0.0, 1.0, rng.random()]))
        grey = np.full((h, w), paper, np.float32)
        if kind in (0, 1, 2):  # dots and bars of ink
            for _ in range(int(rng.integers(0, 6))):
                y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
                grey[y0 : y0 + int(rng.integers(1, max(2, h))),
                     x0 : x0 + int(rng.integers(1, 6))] = rng.random()
        elif kind == 3:  # grain
            grey += ((rng.random((h, w)) < 0.05) * rng.random((h, w))).astype(np.float32)
        elif kind == 4:  # a few grey levels in bands
            grey = (np.round(np.linspace(0, 1, h * w) * 4) / 4).astype(np.float32).reshape(h, w)
        else:  # anything, mostly on paper
            odd = (rng.random((h, w)) * 300 - 20).astype(np.float32)
            odd[rng.random((h, w)) < 0.02] = np.nan
            odd[rng.random((h, w)) < 0.01] = np.inf
            grey = np.where(rng.random((h, w)) < 0.9, np.float32(paper), odd)
        greys.append(np.ascontiguousarray(grey, dtype=np.float32))
    taken = compare(greys, monkeypatch)
    assert taken >= 300, taken  # 358 of them


def test_declines_what_it_does_not_do() -> None:
    rng = np.random.default_rng(0)
    photo = np.clip(0.6 + 0.2 * rng.standard_normal((120, 120)), 0, 1).astype(np.float32)
    huge = np.ones((1700, 50), np.float32)
    assert preprocess._flat_to_mnist(photo) is None  # uneven paper: the lighting analysis
    assert preprocess._flat_to_mnist(huge) is None  # reduced first by the Python code
    assert preprocess._flat_to_mnist(np.ones((50, 50), np.float64)) is None
    assert preprocess._flat_to_mnist(np.ones((50, 50), np.float32)[:, ::2]) is None
    # and to_mnist still answers them through the Python steps
    assert to_mnist(np.ones((50, 50), np.float64)).blank


def test_resize_is_pillows_resampling() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        h, w = (int(v) for v in rng.integers(2, 120, 2))
        image = rng.random((h, w), dtype=np.float32)
        for shape in [(int(rng.integers(1, 100)), w), (h, int(rng.integers(1, 100)))]:
            # one axis: the very same arithmetic as Pillow's
            shrinking = shape[0] * shape[1] < h * w
            method = Image.Resampling.BOX if shrinking else Image.Resampling.BICUBIC
            pil = np.asarray(Image.fromarray(image).resize(shape[::-1], method), np.float32)
            if not shrinking:
                pil = np.clip(pil, image.min(), image.max())
            assert np.array_equal(resize(image, shape), pil), (h, w, shape)
        # both axes: Pillow 13 sometimes resamples the rows first, a float32 step apart
        shape = (int(rng.integers(1, 100)), int(rng.integers(1, 100)))
        shrinking = shape[0] * shape[1] < h * w
        method = Image.Resampling.BOX if shrinking else Image.Resampling.BICUBIC
        pil = np.asarray(Image.fromarray(image).resize(shape[::-1], method), np.float32)
        if not shrinking:
            pil = np.clip(pil, image.min(), image.max())
        assert np.allclose(resize(image, shape), pil, rtol=0, atol=1e-6)


def test_distances_are_scipys() -> None:
    rng = np.random.default_rng(0)
    for _ in range(500):
        h, w = (int(v) for v in rng.integers(1, 80, 2))
        mask = rng.random((h, w)) < rng.random()
        if rng.random() < 0.5:
            mask = ndimage.binary_dilation(mask, iterations=int(rng.integers(1, 4)))
        expected = ndimage.distance_transform_edt(mask)
        got = distance_to_zero(mask)
        assert got.dtype == np.float64 and np.array_equal(got, expected)
    assert np.array_equal(distance_to_zero(np.ones((3, 4), bool)),
                          ndimage.distance_transform_edt(np.ones((3, 4), bool)))


def test_distances_are_scipys_for_strokes_blobs_and_inked_columns() -> None:
    """The rows' search from each pixel outwards, and the envelope for rows it does not
    settle within NEAR_REACH columns: long strokes (columns deep in ink, a zero just
    aside), wide blobs (no zero near along the row), columns inked from top to bottom (no
    zero in them at all), on pictures up to 160 px."""
    rng = np.random.default_rng(1)
    for k in range(300):
        h, w = (int(v) for v in rng.integers(2, 160, 2))
        picture = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(picture)
        for _ in range(int(rng.integers(1, 5))):
            x0, x1 = (int(v) for v in rng.integers(-10, w + 10, 2))
            y0, y1 = (int(v) for v in rng.integers(-10, h + 10, 2))
            if rng.random() < 0.6:  # a stroke, thin to thick
                draw.line([(x0, y0), (x1, y1)], fill=255, width=int(rng.integers(1, 24)))
            else:  # a blob
                draw.ellipse([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], fill=255)
        mask = np.asarray(picture) > 0
        if k % 5 == 0:  # some columns inked all the way down
            mask[:, int(rng.integers(0, w)) :][:, : int(rng.integers(1, 30))] = True
        if mask.all():
            continue
        got = np.empty(mask.shape, np.float64)
        assert preprocess._flat.edt(mask, got)  # compiled, not SciPy's fallback
        assert np.array_equal(got, ndimage.distance_transform_edt(mask)), k


def test_constants_are_preprocess_ones() -> None:
    c = dict(preprocess._flat.CONSTANTS)
    assert c.pop("FLAT_FAR_LEVELS") == round(255 * preprocess.FLAT_FAR)
    assert c.pop("WORK_MARGIN") == preprocess.WORK_BOX // 4
    assert c == {name: getattr(preprocess, name) for name in c}


def test_bad_arrays_are_refused_not_read() -> None:
    flat = preprocess._flat
    with pytest.raises(TypeError):
        flat.to_mnist(np.ones((10, 10), np.float64), np.empty((28, 28), np.uint8))
    with pytest.raises(TypeError):
        flat.to_mnist(np.ones((10,), np.float32), np.empty((28, 28), np.uint8))
    with pytest.raises(ValueError):
        flat.to_mnist(np.ones((10, 10), np.float32), np.empty((27, 28), np.uint8))
    with pytest.raises((TypeError, ValueError, BufferError)):
        flat.resize(np.ones((10, 10), np.float32), np.empty((5, 5), np.float32)[:, ::2])
