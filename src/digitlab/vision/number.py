"""Reading a written number: let the classifier check the segmentation.

vision/segment.py cuts a number into pieces from the ink alone, and the ink cannot always
tell: a digit drawn in two strokes side by side looks like two digits, two digits written
close together touch and look like one wide digit. The classifier can tell, with one more
piece of knowledge: how wide each digit is for its height. So besides each piece, the two
neighbours joined and each piece cut in two or three (segment.cut_options: along the
cheapest paths down through its ink) are classified too, and the reading of the whole
number that is most likely wins. A digit scores the log of the classifier's probability
plus the log of the chance that a digit read as such has that width for its height
(touching digits fused into one are far too wide for the digit they are read as); a join
or a cut must win by a margin, so that the segmenter's answer stands unless the
classifier is clearly surer of another. How much each counts depends on the model
(`Weights`): one trained on digits only reads a fused pair with confidence, one trained
with fused pairs as non-digits (config `outliers`, like the shipped model) is unsure of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from digitlab.vision.preprocess import WORK_BOX, resize, to_mnist
from digitlab.vision.segment import Digit, cut_options, segment_digits
from digitlab.vision.strokes import mask_bbox

CROP_SIDE = WORK_BOX + WORK_BOX // 5  # crops are shrunk to this many px before to_mnist
MERGE_GAP = 0.2  # neighbours this close (share of the taller one's height) may be one digit
# log(width / height) of MNIST training digits' ink boxes, per class: mean and standard
# deviation. How wide a digit read as each class may be for its height.
ASPECT = np.array([(-0.119, 0.218), (-1.007, 0.489), (-0.083, 0.242), (-0.262, 0.226),
                   (-0.270, 0.229), (-0.086, 0.286), (-0.360, 0.229), (-0.294, 0.230),
                   (-0.311, 0.237), (-0.433, 0.215)])
ASPECT_FREE = 1.5  # standard deviations from the mean that cost nothing
# A cut between touching digits crosses one stroke at their joint; one through a digit
# crosses more. Each stroke width crossed beyond CUT_FREE per cut adds Weights.cut_cost.
CUT_FREE = 0.5


@dataclass(frozen=True)
class Weights:
    """How the reader weighs the classifier against the segmenter: log-probability margins
    a join or a cut must win by, the width prior's weight against the log-probability, and
    the cost of each stroke width a cut crosses beyond CUT_FREE."""

    merge_margin: float
    split_margin: float
    aspect_weight: float
    cut_cost: float


# Both chosen by grid search on the 1,500 photo-like strips of benchmarks/realworld.py
# --seed 1, 2 and 3 (the benchmark reports seed 0), each in the middle of a broad plateau.
# For a model trained on digits only, which reads two touching digits as one with
# confidence: joins must win by a margin and the width prior does the rejecting.
PLAIN = Weights(merge_margin=0.25, split_margin=0.0, aspect_weight=0.5, cut_cost=0.5)
# For a model shown fused pairs as non-digits (config `outliers`, data/outliers.py): it is
# unsure of them itself, so a join competes evenly and a cut must win by half a nat (with
# PLAIN it cuts too often); the shipped model reads more of those strips with these.
REJECTING = Weights(merge_margin=0.0, split_margin=0.5, aspect_weight=0.25, cut_cost=0.5)


def weights_for(outliers: float) -> Weights:
    """The reader's weights for a model trained with this `outliers` share."""
    return REJECTING if outliers > 0 else PLAIN


@dataclass
class Candidates:
    """Every 28x28 image worth classifying for one number, and what each one stands for."""

    images: list[np.ndarray] = field(default_factory=list)
    aspects: list[float] = field(default_factory=list)  # log(width / height) of each one's ink
    singles: list[int | None] = field(default_factory=list)  # per piece; None: no ink left
    merges: dict[int, int] = field(default_factory=dict)  # piece i joined with i + 1
    # Piece i cut in 2 or 3: the parts, and the ink the cuts cross (stroke widths).
    splits: dict[int, list[tuple[list[int], float]]] = field(default_factory=dict)
    # Pieces i and i + 1 read as two digits after one of them is cut in two and the part
    # next to the other joins it (a 0 written in two strokes, its right half touching the
    # next digit): the two digits, and the ink the cut crosses.
    borrows: dict[int, list[tuple[list[int], float]]] = field(default_factory=dict)

    def add(self, crop: np.ndarray) -> int | None:
        box = mask_bbox(crop >= 0.5)
        if box is None:
            return None
        factor = max(crop.shape) / CROP_SIDE
        if factor > 1.0:
            # to_mnist redraws a digit at WORK_BOX px; a bigger crop only costs time.
            crop = resize(crop, (max(1, round(crop.shape[0] / factor)),
                                 max(1, round(crop.shape[1] / factor))))
        done = to_mnist(crop)
        if done.blank:
            return None
        self.images.append(done.image)
        self.aspects.append(float(np.log((box[3] - box[1]) / (box[2] - box[0]))))
        return len(self.images) - 1


def candidates(grey: np.ndarray) -> Candidates:
    """The segmenter's pieces, plus joined neighbours and pieces cut in two or three."""
    pieces = segment_digits(grey)
    found = Candidates()
    for piece in pieces:
        found.singles.append(found.add(piece.image))
    for i, (left, right) in enumerate(zip(pieces[:-1], pieces[1:], strict=True)):
        if (index := _add_joined(found, left, right)) is not None:
            found.merges[i] = index
    for i, piece in enumerate(pieces):
        for parts, crossed in cut_options(piece.image):
            indexes = [found.add(part) for part in parts]
            if not all(k is not None for k in indexes):
                continue
            kept = [k for k in indexes if k is not None]
            found.splits.setdefault(i, []).append((kept, crossed))
            if len(parts) == 2:
                _borrow(found, pieces, i, parts, kept, crossed)
    return found


def _borrow(found: Candidates, pieces: list[Digit], i: int, parts: list[np.ndarray],
            kept: list[int], crossed: float) -> None:
    """Piece i cut in two: its left part joined with the piece before, its right part with
    the piece after, each as a reading of those two pieces (Candidates.borrows)."""
    left, right = (Digit(part, pieces[i].bbox) for part in parts)
    if i > 0:
        index = _add_joined(found, pieces[i - 1], left)
        if index is not None:
            found.borrows.setdefault(i - 1, []).append(([index, kept[1]], crossed))
    if i + 1 < len(pieces):
        index = _add_joined(found, right, pieces[i + 1])
        if index is not None:
            found.borrows.setdefault(i, []).append(([kept[0], index], crossed))


def _add_joined(found: Candidates, left: Digit, right: Digit) -> int | None:
    joined = _join(left, right)
    return None if joined is None else found.add(joined)


def digit_scores(found: Candidates, probs: np.ndarray, weights: Weights = PLAIN
                 ) -> np.ndarray:
    """How likely each image is one digit: log probability of the class read, plus the
    weighted log-likelihood of its width for its height given that class."""
    if not len(probs):
        return np.zeros(0)
    read = probs.argmax(axis=1)
    logp = np.log(np.clip(probs.max(axis=1), 1e-12, 1.0))
    aspects = np.asarray(found.aspects[: len(probs)], dtype=np.float64)
    if len(aspects) < len(probs):  # images given without their shape: no prior
        return logp
    z = (aspects - ASPECT[read, 0]) / ASPECT[read, 1]
    # Too wide is what touching digits fused into one look like; too narrow is left to the
    # classifier (half a digit is rarely read with confidence).
    shape = -0.5 * (np.maximum(z - ASPECT_FREE, 0.0) ** 2)
    return logp + weights.aspect_weight * shape


def choose(found: Candidates, probs: np.ndarray, weights: Weights = PLAIN) -> list[int]:
    """Indexes into found.images of the digits read, left to right.

    Dynamic programming over the pieces: a reading's score is the sum of its digits'
    scores (digit_scores), less the margin for every join or cut it makes."""
    score_of = digit_scores(found, probs, weights)
    n = len(found.singles)
    nothing: list[int] = []
    best: list[tuple[float, list[int]]] = [(0.0, nothing)] + [(-np.inf, nothing)] * n
    for i in range(n):
        score, read = best[i]
        if score == -np.inf:
            continue
        options: list[tuple[int, float, list[int]]] = []
        single = found.singles[i]
        # A piece with no ink once preprocessed (a speck) is skipped, not read.
        options.append((1, float(score_of[single]) if single is not None else 0.0,
                        [single] if single is not None else []))
        for parts, crossed in found.splits.get(i, []):
            margin = weights.split_margin + _cut_cost(weights, crossed, len(parts) - 1)
            options.append((1, float(score_of[parts].sum()) - margin, parts))
        if i in found.merges:
            options.append((2, float(score_of[found.merges[i]]) - weights.merge_margin,
                            [found.merges[i]]))
        for digits, crossed in found.borrows.get(i, []):  # a cut and a join: both margins
            margin = weights.merge_margin + weights.split_margin + _cut_cost(weights, crossed, 1)
            options.append((2, float(score_of[digits].sum()) - margin, digits))
        for step, gain, digits in options:
            if score + gain > best[i + step][0]:
                best[i + step] = (score + gain, read + digits)
    return best[n][1]


def _cut_cost(weights: Weights, crossed: float, cuts: int) -> float:
    """What `cuts` cuts crossing `crossed` stroke widths of ink cost beyond CUT_FREE each."""
    return weights.cut_cost * max(0.0, crossed - CUT_FREE * cuts)


def _margin(piece: Digit) -> int | None:
    """The black border segment.py put around the piece's ink, or None where the crop is
    not in input pixels (a huge input that was reduced first)."""
    y0, x0, y1, x1 = piece.bbox
    my = piece.image.shape[0] - (y1 - y0)
    mx = piece.image.shape[1] - (x1 - x0)
    if my != mx or my < 0 or my % 2:
        return None
    return my // 2


def _join(left: Digit, right: Digit) -> np.ndarray | None:
    """Both pieces' ink on one black canvas, where they were in the picture."""
    ml, mr = _margin(left), _margin(right)
    if ml is None or mr is None:
        return None
    height = max(left.bbox[2] - left.bbox[0], right.bbox[2] - right.bbox[0])
    if right.bbox[1] - left.bbox[3] > MERGE_GAP * height:
        return None
    y0 = min(left.bbox[0], right.bbox[0])
    x0 = min(left.bbox[1], right.bbox[1])
    y1 = max(left.bbox[2], right.bbox[2])
    x1 = max(left.bbox[3], right.bbox[3])
    m = max(ml, mr)
    canvas = np.zeros((y1 - y0 + 2 * m, x1 - x0 + 2 * m), np.float32)
    for piece, own in ((left, ml), (right, mr)):
        top, side = piece.bbox[0] - y0 + m - own, piece.bbox[1] - x0 + m - own
        h, w = piece.image.shape
        np.maximum(canvas[top : top + h, side : side + w], piece.image,
                   out=canvas[top : top + h, side : side + w])
    return canvas
