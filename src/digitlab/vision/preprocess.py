"""Turn a grey picture of one handwritten digit into an MNIST-style 28x28 input.

MNIST's recipe (LeCun et al.): bilevel scans, size-normalised to fit a 20x20 box keeping
the aspect ratio, anti-aliased to grey levels, then placed in a 28x28 field so that the
centre of mass of the pixels sits at the centre. Photos and drawings differ from those
scans in polarity, lighting, paper texture, noise and pen width, so those are undone first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from digitlab.errors import ImageError
from digitlab.vision.native import flat as _flat
from digitlab.vision.strokes import BBox, mask_bbox, skeleton, stroke_width

MNIST_SIDE = 28
DIGIT_BOX = 20  # MNIST fits the longer side of every digit into 20 px
WORK_BOX = 80  # stroke surgery happens at 4x the final resolution, then is averaged down
# Stroke width as a fraction of the digit box's longer side, measured on MNIST itself
# with `stroke_width` (median, and the band most digits fall in).
STROKE_TARGET = 0.11
STROKE_RANGE = (0.08, 0.18)
MAX_WORK_SIDE = 1600  # bigger inputs are averaged down first; a digit needs far less
MIN_CONTRAST = 0.08  # ink must differ from paper by this much (of full scale) to count
SHADOWED_CONTRAST = 0.24  # ... and by this much where a hard shadow hides it (_threshold)
SPECK_FRACTION = 0.02  # components smaller than this share of the largest are dirt
MIN_EXTENT = (3.0, 0.02)  # a digit's box spans this many pixels and share of the picture
# Lines a pen drew are this thin for their length (stroke width / box's longer side) and
# cover at most this share of the picture (_stroke_like).
STROKE_LIKE = (0.25, 0.15)
MIN_PAPER = 0.05  # paper darker than this is taken as this when ink is scaled by it
# Flat paper (see _flat_paper_residual): this share of the pixels, and of the border's,
# lies within FLAT_LEVELS grey levels of the commonest value; ink is FLAT_FAR away. Where
# a stroke crosses the border, its pixels there count as paper's when they are a run along
# that side no longer than FLAT_BORDER_RUN of the picture's shorter side.
FLAT_LEVELS = 2
FLAT_SHARE = 0.5
FLAT_BORDER_SHARE = 0.95
FLAT_FAR = 0.25
FLAT_BORDER_RUN = 0.25


def _configure_compiled() -> None:
    """Hand the constants above to the compiled flat-paper path, which follows the same
    rules (it declines every picture until this has run)."""
    if _flat is None:
        return
    _flat.configure(
        digit_box=DIGIT_BOX, work_box=WORK_BOX, max_work_side=MAX_WORK_SIDE,
        flat_levels=FLAT_LEVELS, flat_far_levels=round(255 * FLAT_FAR),
        stroke_target=STROKE_TARGET, stroke_low=STROKE_RANGE[0], stroke_high=STROKE_RANGE[1],
        min_contrast=MIN_CONTRAST, shadowed_contrast=SHADOWED_CONTRAST,
        speck_fraction=SPECK_FRACTION, flat_share=FLAT_SHARE,
        flat_border_share=FLAT_BORDER_SHARE, flat_border_run=FLAT_BORDER_RUN,
        min_extent_px=MIN_EXTENT[0], min_extent_share=MIN_EXTENT[1],
        stroke_like_width=STROKE_LIKE[0], stroke_like_ink=STROKE_LIKE[1], min_paper=MIN_PAPER)


_configure_compiled()

@dataclass(frozen=True)
class Preprocessed:
    """One digit ready for a model: `image` is uint8 [28, 28], white ink on black."""

    image: np.ndarray
    blank: bool
    bbox: BBox | None  # where the ink was in the input image; None when blank


@dataclass(frozen=True)
class InkMap:
    """Cleaned ink of a whole picture, shared by `to_mnist` and the number segmenter."""

    soft: np.ndarray  # float32 [H, W], ink strength in [0, 1] with anti-aliased edges
    mask: np.ndarray  # bool [H, W], the kept strokes (specks removed)
    input_shape: tuple[int, int]  # larger than [H, W] when a huge input was reduced
    blank: bool

    def bbox(self) -> BBox | None:
        """Bounding box of the kept ink in map pixels."""
        return mask_bbox(self.mask)

    def to_input(self, box: BBox) -> BBox:
        """A box in map pixels -> the same box in the input picture's pixels."""
        sy = self.input_shape[0] / self.mask.shape[0]
        sx = self.input_shape[1] / self.mask.shape[1]
        y0, x0, y1, x1 = box
        return (
            int(y0 * sy),
            int(x0 * sx),
            min(self.input_shape[0], math.ceil(y1 * sy)),
            min(self.input_shape[1], math.ceil(x1 * sx)),
        )


def to_mnist(grey: np.ndarray) -> Preprocessed:
    """Normalise one digit the way MNIST's scans were; a picture without ink is blank."""
    done = flat_to_mnist(grey)
    if done is not None:
        return done
    ink = ink_map(grey)
    box = ink.bbox()
    if ink.blank or box is None:
        return _blank()
    crop = _crop_soft(ink, box)
    redrawn = _normalise_stroke(_to_working(crop))
    # Strokes MNIST would accept are resampled once, straight from the input pixels.
    image = _paste_centred(_fit_box(crop if redrawn is None else redrawn))
    return Preprocessed(_to_uint8(image), blank=False, bbox=ink.to_input(box))


def flat_to_mnist(grey: np.ndarray) -> Preprocessed | None:
    """to_mnist of a digit on flat paper (a drawing, a clean scan) in one compiled call
    (vision/_flat.c); None where it declines (photos, pictures over MAX_WORK_SIDE) or is not
    built, and the steps below run. Its answer is the steps' own within a tolerance (the
    same digit, a close 28x28 input: tests/test_flat_native.py). Takes float32 grey levels
    or, quicker, the 8-bit pixels of a decoded PNG (read as as_grey reads them)."""
    if _flat is None or not (isinstance(grey, np.ndarray) and grey.ndim == 2
                             and grey.dtype in (np.float32, np.uint8)
                             and grey.flags.c_contiguous):
        return None
    image = np.empty((MNIST_SIDE, MNIST_SIDE), np.uint8)
    found = _flat.to_mnist(grey, image)
    if found is None:
        return None
    blank, box = found
    return _blank() if blank else Preprocessed(image, blank=False, bbox=box)


def looks_mnist_like(arr: np.ndarray) -> bool:
    """True for a 28x28 uint8 picture with a black border, i.e. already MNIST-style."""
    arr = np.asarray(arr)
    if arr.shape != (MNIST_SIDE, MNIST_SIDE) or arr.dtype != np.uint8:
        return False
    border = np.concatenate([arr[:2], arr[-2:], arr[:, :2].T, arr[:, -2:].T], axis=None)
    # np.median(border) == 0, counted: over half the border is black.
    return bool(np.count_nonzero(border == 0) > border.size // 2 and arr.max() > 0)


def from_mnist_like(arr: np.ndarray) -> Preprocessed:
    """Pass an already MNIST-style array through untouched (uint8, or floats in [0, 1])."""
    arr = np.asarray(arr)
    if arr.shape != (MNIST_SIDE, MNIST_SIDE):
        raise ImageError(f"expected a 28x28 MNIST-style array, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = _to_uint8(np.asarray(arr, dtype=np.float32))
    box = mask_bbox(arr > 0)
    return Preprocessed(arr.copy(), blank=box is None, bbox=box)


# --- cleaning: polarity, lighting, threshold, specks -------------------------------------


def ink_map(grey: np.ndarray) -> InkMap:
    """Find the ink: bright strokes on a clean black ground, whatever the input looked like."""
    original = as_grey(grey)
    grey = _limit_size(original, MAX_WORK_SIDE)
    residual = _flat_paper_residual(grey)
    if residual is None:
        residual = _photo_residual(grey)
    shape = (original.shape[0], original.shape[1])
    found = _threshold(residual)
    if found is None:
        empty = np.zeros(grey.shape, np.float32)
        return InkMap(empty, empty.astype(bool), shape, blank=True)
    return InkMap(found[0], found[1], shape, blank=False)


def _photo_residual(grey: np.ndarray) -> np.ndarray:
    """Ink strength over paper whose level drifts (shadows, gradients, texture)."""
    dark = _dark_ink(grey)
    ink = 1.0 - grey if dark else grey
    background = _background(ink)
    residual = ink - background
    if dark:
        # Light scales paper and ink alike, so in a shadow the contrast shrinks with the
        # paper's brightness; dividing by it makes shaded strokes as strong as lit ones.
        residual /= np.maximum(1.0 - background, MIN_PAPER)
    return residual


def _flat_paper_residual(grey: np.ndarray) -> np.ndarray | None:
    """Ink strength for a picture on perfectly even paper (a canvas, a paint program, a clean
    scan); None for anything else, which takes the full lighting analysis.

    Such pictures are recognised by their histogram: most pixels, and nearly the whole
    border, sit within a couple of grey levels of one value, strokes that cross the border
    aside (_border_on_paper). A shadow or a gradient reaches the border and spreads the
    paper over many levels, and camera noise alone spreads it further, so photos never
    pass. On flat paper the paper level is that value, and the ink is whichever side of
    it holds more of the far-off pixels; the result equals what the lighting analysis
    finds, at a fraction of the cost (the drawing page's case).
    """
    levels = np.round(grey * 255.0).astype(np.uint8)
    hist = np.bincount(levels.ravel(), minlength=256)
    paper = int(hist.argmax())
    lo, hi = max(0, paper - FLAT_LEVELS), min(255, paper + FLAT_LEVELS)
    if hist[lo : hi + 1].sum() < FLAT_SHARE * levels.size:
        return None
    far = round(255 * FLAT_FAR)  # in grey levels
    dark = hist[: max(0, paper - far)].sum() > hist[paper + far + 1 :].sum()
    ink = (paper - far, 256) if dark else (-1, paper + far)  # ink lies below or above these
    if _border_on_paper(levels, lo, hi, ink) < FLAT_BORDER_SHARE * 2 * sum(levels.shape):
        return None
    level = np.float32(paper / 255.0)
    if dark:
        return (level - grey) / max(float(level), MIN_PAPER)
    return grey - level


def _border_on_paper(levels: np.ndarray, lo: int, hi: int, ink: tuple[int, int]) -> int:
    """Pixels of the four sides (corners twice) that are paper's: within lo..hi, or in a
    stroke that crosses the edge: a run of pixels off the paper along a side, no longer
    than FLAT_BORDER_RUN of the picture's shorter side, that is ink somewhere (below ink[0]
    or above ink[1]). The lighting analysis takes ink that narrow for ink as well (its
    opening is 0.6 of the shorter side wide, and a stroke mirrored at the edge is still
    narrower); a shadow or a gradient along a side makes a longer run, or one that never
    gets as dark as ink."""
    limit = FLAT_BORDER_RUN * min(levels.shape)
    kept = 0
    for side in (levels[0], levels[-1], levels[:, 0], levels[:, -1]):
        off = (side < lo) | (side > hi)
        kept += side.size - int(np.count_nonzero(off))
        if not off.any():
            continue
        bounds = np.flatnonzero(np.diff(off, prepend=False, append=False))
        starts, ends = bounds[::2], bounds[1::2]
        reached = np.concatenate(([0], np.cumsum((side < ink[0]) | (side > ink[1]))))
        crossing = (ends - starts <= limit) & (reached[ends] > reached[starts])
        kept += int((ends - starts)[crossing].sum())
    return kept


def as_grey(image: np.ndarray) -> np.ndarray:
    """Grey [H, W], [H, W, 1] or RGB(A) [H, W, 3|4] -> float32 [H, W] in [0, 1].

    Integers are scaled by their type's range; floats are taken as [0, 1] unless they
    exceed 1, in which case they are taken as [0, 255].
    """
    arr = np.asarray(image)
    shape = arr.shape
    if np.issubdtype(arr.dtype, np.integer):
        arr = arr.astype(np.float32) / np.float32(np.iinfo(arr.dtype).max)
    else:
        arr = np.nan_to_num(arr.astype(np.float32))
        if arr.size and arr.max() > 1.0:
            arr = arr / np.float32(255.0)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    elif arr.ndim == 3 and arr.shape[2] in (3, 4):
        arr = arr[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    if arr.ndim != 2 or min(arr.shape) < 2:
        raise ImageError(f"expected a grey image [H, W], got shape {shape}")
    return np.clip(arr, 0.0, 1.0).astype(np.float32, copy=False)


def work_shape(height: int, width: int, max_side: int = MAX_WORK_SIDE) -> tuple[int, int]:
    """(height, width) at which a picture is preprocessed: shrunk to fit max_side, so the
    decoder need not hold more pixels than that."""
    scale = max(height, width) / max_side
    if scale <= 1.0:
        return height, width
    return max(1, round(height / scale)), max(1, round(width / scale))


def _limit_size(grey: np.ndarray, max_side: int) -> np.ndarray:
    shape = work_shape(grey.shape[0], grey.shape[1], max_side)
    return grey if shape == grey.shape else resize(grey, shape)


def _dark_ink(grey: np.ndarray) -> bool:
    """Is the ink darker than the paper? Ink sticks out of the local paper level further.

    The paper level is a median over a large window, so it follows shadows and gradients
    but not strokes; comparing the most extreme pixels on either side of it finds the ink
    even when it covers a tiny part of a big photo.
    """
    small = _shrink(grey, 32)
    size = _odd(0.6 * min(small.shape))
    paper = resize(ndimage.median_filter(small, size=size, mode="nearest"), grey.shape)
    residual = (grey - paper).ravel()
    k = min(max(8, residual.size // 5000), residual.size // 4)
    brighter = np.partition(residual, residual.size - k)[residual.size - k]
    darker = -np.partition(residual, k)[k]
    return bool(darker > brighter)


def _background(ink: np.ndarray) -> np.ndarray:
    """Paper level under bright ink: a grey opening wider than any stroke removes the ink.

    Done on a reduced copy because lighting varies slowly; that also keeps it cheap.
    Enlarging it back blurs hard shadow edges, which would leave a false stroke along
    each edge, so within the range the coarse estimate allows, the pixel is its own paper.
    """
    small = _shrink(ink, 64)
    size = _odd(max(3.0, 0.6 * min(small.shape)))
    # An opening flattens a lighting ramp near the picture's edge (it cannot see past the
    # edge); taking the linear part of the lighting out first avoids that.
    plane = _lighting_plane(small)
    paper = ndimage.grey_opening(small - plane, size=(size, size)) + plane
    low = resize(ndimage.minimum_filter(paper, size=3), ink.shape)
    high = resize(ndimage.maximum_filter(paper, size=3), ink.shape)
    return np.clip(ink, low, high)


def _lighting_plane(image: np.ndarray) -> np.ndarray:
    """Least-squares plane through the paper, refitted without the pixels far from it (ink)."""
    h, w = image.shape
    yy, xx = np.mgrid[0:h, 0:w]
    design = np.stack([np.ones(h * w), yy.ravel() / h, xx.ravel() / w], axis=1)
    values = image.ravel()
    use = np.ones(values.size, bool)
    for _ in range(3):
        coef, *_ = np.linalg.lstsq(design[use], values[use], rcond=None)
        misfit = np.abs(values - design @ coef)
        use = misfit <= max(2.0 * float(np.median(misfit)), 1e-3)
    return (design @ coef).reshape(h, w).astype(np.float32)


def _threshold(residual: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Separate ink from paper noise with a half-contrast threshold.

    Otsu's method breaks down when ink is a tiny share of a photo (it splits the noise
    instead), so the noise level is measured (median absolute deviation), anything well
    above it is candidate ink, and the cut is halfway between paper and typical ink.
    Returns the soft ink map and the mask of kept strokes; None when there is no ink.
    """
    paper = float(np.median(residual))
    spread = 1.4826 * float(np.median(np.abs(residual - np.float32(paper))))
    coarse = paper + max(5.0 * spread, MIN_CONTRAST / 2)
    # The spread also counts a shadow's edge or a gradient the lighting analysis left, and
    # five times it can sit above a faint stroke. So the floor comes from the paper's
    # pixel-to-pixel noise, which such slow changes do not touch, but stays above twice the
    # spread, so that a leftover band of shadow is not ink.
    floor = paper + max(5.0 * _pixel_noise(residual), 2.0 * spread, MIN_CONTRAST / 2)
    # Ink that stands out above the coarse floor is surely there. Where nothing does (a
    # hard shadow across the page doubles the spread), what the finer floor finds must be
    # strong, thin strokes: blank paper under such lighting yields faint hairlines only.
    sure = np.count_nonzero(residual > coarse) >= 3
    if sure:
        floor = min(coarse, floor)
    candidates = residual[residual > floor]
    if candidates.size < 3:
        return None  # nothing stands out from the paper: no ink
    ink = float(np.percentile(candidates, 90))
    if ink - paper < (MIN_CONTRAST if sure else SHADOWED_CONTRAST):
        return None
    mask = _drop_specks(residual > max(floor, (paper + ink) / 2))
    box = mask_bbox(mask)
    if box is None or not _has_stroke(box, mask.shape) or not (
            sure or _stroke_like(mask, box)):
        return None
    # Keep the anti-aliased fringe of kept strokes only (2 px around them); the rest is
    # paper noise. Only the strokes' box, so grown, can hold any.
    y0, x0, y1, x1 = box
    near = (slice(max(0, y0 - 2), y1 + 2), slice(max(0, x0 - 2), x1 + 2))
    soft = np.zeros(residual.shape, np.float32)
    soft[near] = np.clip((residual[near] - paper) / (ink - paper), 0.0, 1.0)
    soft[near] *= ndimage.maximum_filter(mask[near], size=5)
    return soft, mask


def _pixel_noise(residual: np.ndarray) -> float:
    """Robust sigma of the differences between horizontal neighbours, over sqrt 2."""
    if residual.shape[1] < 2:
        return float("inf")
    return 1.4826 * float(np.median(np.abs(np.diff(residual, axis=1)))) / math.sqrt(2.0)


def _drop_specks(mask: np.ndarray) -> np.ndarray:
    box = mask_bbox(mask)
    if box is None:
        return mask
    # Components lie inside the box of all the ink: label only that.
    inside = (slice(box[0], box[2]), slice(box[1], box[3]))
    labels, count = ndimage.label(mask[inside], structure=np.ones((3, 3)))
    if count == 1:  # one stroke, nothing smaller beside it (most drawings): keep it whole
        return mask if np.count_nonzero(labels) >= 2 else np.zeros_like(mask)
    areas = np.bincount(labels.ravel())
    areas[0] = 0
    keep = areas >= max(2.0, SPECK_FRACTION * areas.max())
    keep[0] = False
    out = np.zeros_like(mask)
    out[inside] = keep[labels]
    return out


def _stroke_like(mask: np.ndarray, box: BBox) -> bool:
    """Lines a pen drew (`box`: the mask's): thin for their length, covering little of the
    picture, clear of its edges (where a shadow's edge ends)."""
    if box[0] == 0 or box[1] == 0 or box[2] == mask.shape[0] or box[3] == mask.shape[1]:
        return False
    extent = max(box[2] - box[0], box[3] - box[1])
    return (stroke_width(mask) <= STROKE_LIKE[0] * extent
            and float(mask.mean()) <= STROKE_LIKE[1])


def _has_stroke(box: BBox, shape: tuple[int, ...]) -> bool:
    """A digit (its ink's box) spans a visible part of the picture; specks of paper grain
    do not."""
    extent = max(box[2] - box[0], box[3] - box[1])
    return extent >= max(MIN_EXTENT[0], MIN_EXTENT[1] * max(shape))


# --- geometry: crop, stroke width, 20-px box, centre of mass -----------------------------


def _crop_soft(ink: InkMap, box: BBox) -> np.ndarray:
    # The soft fringe reaches 2 px beyond the mask (see _threshold); keep it.
    y0, x0, y1, x1 = box
    h, w = ink.soft.shape
    return ink.soft[max(0, y0 - 2) : min(h, y1 + 2), max(0, x0 - 2) : min(w, x1 + 2)]


def _to_working(crop: np.ndarray) -> np.ndarray:
    """Resample so the longer side is WORK_BOX px, with a margin for thickening strokes.

    When shrinking, a max filter first spreads each stroke over the pixels that will be
    averaged together, so a hair-thin line in a huge picture survives as a 1-px line.
    """
    factor = max(crop.shape) / WORK_BOX
    if factor > 1.0:
        crop = ndimage.maximum_filter(crop, size=math.ceil(factor))
    shape = (max(1, round(crop.shape[0] / factor)), max(1, round(crop.shape[1] / factor)))
    return np.pad(resize(crop, shape), WORK_BOX // 4)


def _normalise_stroke(work: np.ndarray) -> np.ndarray | None:
    """Redraw strokes outside MNIST's width range at its typical width, along their skeleton.

    Redrawing from a connected skeleton (rather than eroding) cannot cut a stroke of uneven
    width, and a hair-thin line is its own skeleton, so one rule serves both cases.
    Returns None when the strokes are already in range.
    """
    mask = work >= 0.5
    box = mask_bbox(mask)
    if box is None:
        return None
    long_side = max(box[2] - box[0], box[3] - box[1])
    width = stroke_width(mask)
    if STROKE_RANGE[0] <= width / long_side <= STROKE_RANGE[1]:
        return None
    # The redrawn digit's box shrinks or grows with the stroke, so aim at the new box.
    target = max(2.0, STROKE_TARGET * (long_side - width) / (1.0 - STROKE_TARGET))
    distance = ndimage.distance_transform_edt(~skeleton(mask))
    redrawn = np.clip(target / 2.0 + 0.5 - distance, 0.0, 1.0)
    if width > target:
        # Thinning also erodes: a stubby arm shorter than it is wide has no skeleton
        # branch, but its core survives erosion.
        depth = ndimage.distance_transform_edt(mask)
        redrawn = np.maximum(redrawn, np.clip(depth - (width - target) / 2.0, 0.0, 1.0))
    return redrawn.astype(np.float32)


def _fit_box(ink: np.ndarray) -> np.ndarray:
    """Crop to the ink and scale its longer side to 20 px, keeping the aspect ratio.

    Like MNIST, the box's edges land on pixel edges and the shorter side is rounded.
    """
    box = mask_bbox(ink >= 0.5)
    if box is None:
        return np.zeros((1, 1), np.float32)
    y0, x0, y1, x1 = box
    scale = DIGIT_BOX / max(y1 - y0, x1 - x0)
    shape = (max(1, round((y1 - y0) * scale)), max(1, round((x1 - x0) * scale)))
    return resize(ink[y0:y1, x0:x1], shape)


def _paste_centred(digit: np.ndarray) -> np.ndarray:
    """Place the digit so its centre of mass lands on pixel (14, 14), as MNIST did."""
    out = np.zeros((MNIST_SIDE, MNIST_SIDE), np.float32)
    if digit.sum() <= 0:
        return out
    h, w = digit.shape
    cy, cx = ndimage.center_of_mass(digit)
    # Clamping keeps all the ink when an odd shape would push it off the field.
    top = min(max(round(MNIST_SIDE / 2 - cy), 0), MNIST_SIDE - h)
    left = min(max(round(MNIST_SIDE / 2 - cx), 0), MNIST_SIDE - w)
    out[top : top + h, left : left + w] = digit
    return out


# --- small helpers ------------------------------------------------------------------------


def resize(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Float resize: area averaging to shrink (anti-aliased), bicubic to enlarge (sharp)."""
    if image.shape == shape:
        return image.astype(np.float32, copy=False)
    shrinking = shape[0] * shape[1] < image.shape[0] * image.shape[1]
    method = Image.Resampling.BOX if shrinking else Image.Resampling.BICUBIC
    pil = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32))
    out = np.asarray(pil.resize((shape[1], shape[0]), method), dtype=np.float32)
    # Bicubic overshoots at edges; keep the [lo, hi] range of the input.
    return out if shrinking else np.clip(out, image.min(), image.max())


def _shrink(image: np.ndarray, short_side: int) -> np.ndarray:
    factor = min(image.shape) / short_side
    if factor <= 1.0:
        return image
    return resize(image, (round(image.shape[0] / factor), round(image.shape[1] / factor)))


def _odd(x: float) -> int:
    n = max(1, int(x))
    return n if n % 2 else n + 1


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def _blank() -> Preprocessed:
    return Preprocessed(np.zeros((MNIST_SIDE, MNIST_SIDE), np.uint8), blank=True, bbox=None)
