"""The compiled flat-paper path (vision/_flat.c) against the Python steps it accelerates.

`to_mnist` first offers a picture to the compiled code; what it answers must match the
NumPy/SciPy/Pillow steps (the reference) within a tolerance, and what it declines they
still do. The tolerance (docs/decisions/0005-compiled-preprocessing.md says why):

- each picture: the same verdict (ink or blank);
- each corpus: the same digit from the shipped model for every picture, a mean absolute
  difference of the 28x28 inputs of at most MEAN_DIFFERENCE grey levels, and at most
  FAR_SHARE of its pictures further apart than FAR_DIFFERENCE (or with another box of ink).

The difference is taken after aligning the two inputs by at most a pixel: both place the
digit by rounding its centre of mass, and a centre halfway between two pixels may round
either way (a whole-pixel shift of the same picture). The compiled path reads 8-bit grey
levels; a float picture between two levels can land on the other side of one of the
steps' thresholds (redraw a stroke or not), which is what FAR_SHARE allows.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy import ndimage

from conftest import require_native
from digitlab.vision import preprocess
from digitlab.vision.preprocess import to_mnist
from fuzz_targets import FAR_DIFFERENCE, difference

MEAN_DIFFERENCE = 0.5  # grey levels (of 255), mean over a corpus
FAR_SHARE = 0.03  # at most this share of a corpus may be further apart than FAR_DIFFERENCE
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module", autouse=True)
def built() -> None:
    require_native()


def python_steps(grey: np.ndarray) -> preprocess.Preprocessed:
    """to_mnist with the compiled path out of the way: the reference."""
    compiled = preprocess.flat_to_mnist
    preprocess.flat_to_mnist = lambda grey: None
    try:
        return to_mnist(grey)
    finally:
        preprocess.flat_to_mnist = compiled


def compare(greys: list[np.ndarray], recognizer=None) -> int:
    """Check the tolerance on the pictures the compiled path takes (and, given the model,
    that it reads the same digits); returns how many it took."""
    fast_inputs, slow_inputs, far, differences = [], [], 0, []
    for k, grey in enumerate(greys):
        fast = preprocess.flat_to_mnist(grey)
        if fast is None:
            continue
        slow = python_steps(grey)
        assert fast.blank == slow.blank, k
        assert fast.image.dtype == np.uint8 and fast.image.shape == (28, 28)
        differences.append(difference(fast.image, slow.image))
        far += differences[-1] > FAR_DIFFERENCE or fast.bbox != slow.bbox
        if not fast.blank:
            fast_inputs.append(fast.image)
            slow_inputs.append(slow.image)
    if differences:
        assert np.mean(differences) <= MEAN_DIFFERENCE, np.mean(differences)
        assert far <= FAR_SHARE * len(differences), (far, len(differences))
    if recognizer is not None and fast_inputs:
        fast = recognizer.classify(np.stack(fast_inputs)).argmax(1)
        slow = recognizer.classify(np.stack(slow_inputs)).argmax(1)
        assert np.array_equal(fast, slow), np.flatnonzero(fast != slow)
    return len(differences)


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


@pytest.mark.slow
def test_random_drawings_match_the_python_steps() -> None:
    taken = compare(drawings(400, seed=1))
    assert taken >= 250, taken  # most drawings are the compiled path's to answer


def test_drawings_off_the_edges_are_read_as_the_python_steps_read_them() -> None:
    """Strokes that run off the picture: the compiled path takes a picture exactly when the
    Python steps find flat paper (strokes crossing the border in short runs of ink), and
    answers as they do."""
    greys = drawings(300, seed=5, overhang=0.5)
    for k, grey in enumerate(greys):
        flat = preprocess._flat_paper_residual(preprocess.as_grey(grey)) is not None
        assert (preprocess.flat_to_mnist(grey) is not None) == flat, k
    crossing = [g for g in greys if np.count_nonzero(np.concatenate(
        [g[0], g[-1], g[:, 0], g[:, -1]]) != np.median(g)) > 0.05 * 2 * sum(g.shape)]
    assert len(crossing) >= 60, len(crossing)
    assert compare(crossing) >= 25


# --- the benchmarks' corpora: the same digit from the shipped model ------------------------


def page_drawings(images: np.ndarray) -> list[np.ndarray]:
    """MNIST digits as the drawing page sends them (140 px, ink #111; also 100 and 280 px
    and other inks), as float32 grey."""
    greys = []
    for k, image in enumerate(images):
        side = (140, 100, 280)[k % 3]
        picture = Image.fromarray(255 - image).resize((side, side), Image.BILINEAR)
        ink = (17, 0, 90)[k % 3]
        levels = np.asarray(picture, np.float32) / 255.0
        greys.append(np.round(ink + levels * (255 - ink)).astype(np.float32) / np.float32(255))
    return greys


def photo_corpora(images: np.ndarray, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """benchmarks/realworld.py's pictures, made by its generator (benchmarks/photolike.py):
    photo-like single digits, and the digit crops the segmenter cuts from photo-like strips
    of 3-6 digits (what `--number` hands to_mnist), as float32 grey."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import photolike
    finally:
        sys.path.remove(str(BENCHMARKS))
    from digitlab.vision.decode import decode_image
    from digitlab.vision.segment import segment_digits

    rng = np.random.default_rng(seed)
    singles = [decode_image(photolike.photo_jpeg(image, rng)) for image in images]
    crops = []
    for k in range(0, len(images) - 6, 5):
        strip = photolike.to_jpeg(photolike.strip(list(images[k : k + 3 + k % 4]), rng),
                                  int(rng.integers(*photolike.QUALITY_RANGE)))
        crops += [digit.image for digit in segment_digits(decode_image(strip))]
    return singles, crops


def test_the_same_digit_on_every_corpus(mnist_test_split) -> None:
    """The drawing page's digits (float grey and the 8-bit pixels serve hands over),
    realworld's photo-like singles and the crops of its strips: the compiled path and the
    Python steps give the shipped model the same digits."""
    from digitlab.api import Recognizer
    from digitlab.vision.decode import plain_pixels
    from serving import drawing

    recognizer = Recognizer.load()
    images = mnist_test_split.images
    page = page_drawings(images[:300])
    assert compare(page, recognizer) >= 240
    pixels = [np.round(grey * 255).astype(np.uint8) for grey in page]
    assert compare([*pixels, plain_pixels(drawing())], recognizer) >= 240
    singles, crops = photo_corpora(images[300:700])
    assert compare(singles, recognizer) <= len(singles) // 100  # photos: the Python steps
    assert len(crops) >= 200 and compare(crops, recognizer) >= 0.8 * len(crops)


def test_eight_bit_pixels_read_as_their_floats() -> None:
    """uint8 pixels (a decoded PNG) go in as they are, and the answer is the one for their
    float32 v / 255 (the very same), and the Python steps' (which take uint8 too) within
    the tolerance, on drawings of every kind, random pixels and pictures the compiled path
    declines."""
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
    declined = 0
    for k, pixels in enumerate(pictures):
        floats = pixels.astype(np.float32) / 255.0
        fast, via_floats = preprocess.flat_to_mnist(pixels), preprocess.flat_to_mnist(floats)
        assert (fast is None) == (via_floats is None), k
        if fast is None:
            declined += 1
            continue
        assert (fast.blank, fast.bbox) == (via_floats.blank, via_floats.bbox), k
        assert np.array_equal(fast.image, via_floats.image), k
    assert compare(pictures) >= 120 and declined >= 2, declined
    done = to_mnist(ramp)  # declined: the Python steps read the pixels
    assert np.array_equal(done.image, to_mnist(ramp.astype(np.float32) / 255.0).image)


def test_edge_cases_match() -> None:
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
    compare([blank, one_dot, at_edge, faint, with_nan, tiny, line])
    assert preprocess.flat_to_mnist(blank).blank  # answered, not declined


@pytest.mark.slow
def test_odd_arrays_match() -> None:
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
    assert compare(greys) >= 300


def test_declines_what_it_does_not_do() -> None:
    rng = np.random.default_rng(0)
    photo = np.clip(0.6 + 0.2 * rng.standard_normal((120, 120)), 0, 1).astype(np.float32)
    huge = np.ones((1700, 50), np.float32)
    assert preprocess.flat_to_mnist(photo) is None  # uneven paper: the lighting analysis
    assert preprocess.flat_to_mnist(huge) is None  # reduced first by the Python code
    assert preprocess.flat_to_mnist(np.ones((50, 50), np.float64)) is None
    assert preprocess.flat_to_mnist(np.ones((50, 50), np.float32)[:, ::2]) is None
    # and to_mnist still answers them through the Python steps
    assert to_mnist(np.ones((50, 50), np.float64)).blank


def test_resize_is_pillows_resampling() -> None:
    """The compiled resampling (area averaging to shrink, bicubic to enlarge) against
    preprocess.resize, which is Pillow's."""
    rng = np.random.default_rng(0)
    for _ in range(300):
        h, w = (int(v) for v in rng.integers(2, 120, 2))
        image = rng.random((h, w), dtype=np.float32)
        for shape in [(int(rng.integers(1, 100)), w), (h, int(rng.integers(1, 100))),
                      (int(rng.integers(1, 100)), int(rng.integers(1, 100)))]:
            got = np.empty(shape, np.float32)
            preprocess._flat.resize(image, got)
            assert np.allclose(got, preprocess.resize(image, shape), rtol=0, atol=1e-5)


def test_distances_are_scipys() -> None:
    rng = np.random.default_rng(0)
    for _ in range(500):
        h, w = (int(v) for v in rng.integers(1, 80, 2))
        mask = rng.random((h, w)) < rng.random()
        if rng.random() < 0.5:
            mask = ndimage.binary_dilation(mask, iterations=int(rng.integers(1, 4)))
        got = np.full(mask.shape, -1.0)
        if preprocess._flat.edt(mask, got):
            assert np.array_equal(got, ndimage.distance_transform_edt(mask))
        else:
            assert mask.all()  # no zero to measure from
    assert not preprocess._flat.edt(np.ones((3, 4), bool), np.empty((3, 4)))


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
        assert preprocess._flat.edt(mask, got)
        assert np.array_equal(got, ndimage.distance_transform_edt(mask)), k


def test_the_compiled_path_takes_its_constants_from_preprocess(monkeypatch) -> None:
    """The rules' constants are written once, in preprocess.py: changing one there changes
    what the compiled path does (here the digit's box), and configure refuses values its
    buffers cannot hold."""
    seven = pen((140, 140), [[(40, 30), (100, 30), (60, 115)]], width=9, ink=0.0, paper=1.0)
    try:
        monkeypatch.setattr(preprocess, "DIGIT_BOX", 12)
        preprocess._configure_compiled()
        small = preprocess.flat_to_mnist(seven)
        assert small is not None and not small.blank
        assert (small.image > 0).any(axis=1).sum() <= 13  # 12 px, and its soft edge
        assert difference(small.image, python_steps(seven).image) <= FAR_DIFFERENCE
        # a digit must span more than the picture: both paths find none
        monkeypatch.setattr(preprocess, "MIN_EXTENT", (200.0, 0.02))
        preprocess._configure_compiled()
        assert preprocess.flat_to_mnist(seven).blank and python_steps(seven).blank
        for bad in (40, 0):
            monkeypatch.setattr(preprocess, "DIGIT_BOX", bad)
            with pytest.raises(ValueError):
                preprocess._configure_compiled()
    finally:
        monkeypatch.undo()
        preprocess._configure_compiled()
    assert (preprocess.flat_to_mnist(seven).image > 0).any(axis=1).sum() >= 19
    with pytest.raises(TypeError):
        preprocess._flat.configure(digit_box=20)  # every constant, or none


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
