"""Reading a written number: let the classifier check the segmentation.

vision/segment.py cuts a number into pieces from the ink alone, and the ink cannot always
tell: a digit drawn in two strokes side by side looks like two digits, a narrow 1 leaning
on its neighbour looks like one wide digit. The classifier can tell: a real digit is read
with confidence, half a digit or two digits fused are not. So besides each piece, the two
neighbours joined and a wide piece cut in two are classified too, and the reading of the
whole number that the classifier finds most likely wins, with a margin so that the
segmenter's answer stands unless the classifier is clearly surer of another.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from digitlab.vision.preprocess import to_mnist
from digitlab.vision.segment import Digit, segment_digits

# Log-probability margins an alternative reading must win by (e^0.25: 1.3 times as likely),
# chosen on 1,000 photo-like strips drawn with two other seeds than the benchmark's
# (benchmarks/realworld.py): of 0, 0.25, 0.5, 0.75, 1 and never, 0.25 for both read the most
# numbers exactly, 90.5% (the segmenter alone: 88.4%); 0 joins and cuts far too often.
MERGE_MARGIN = 0.25
SPLIT_MARGIN = 0.25
MERGE_GAP = 0.2  # neighbours this close (share of the taller one's height) may be one digit
SPLIT_ASPECT = 0.75  # pieces at least this wide for their height may be two digits
# Where in a piece's width cuts are tried, one per window at its column with the least ink:
# a narrow 1 leaning on a digit joins it near one side, two equal digits in the middle.
SPLIT_WINDOWS = ((0.15, 0.35), (0.35, 0.65), (0.65, 0.85))


@dataclass
class Candidates:
    """Every 28x28 image worth classifying for one number, and what each one stands for."""

    images: list[np.ndarray] = field(default_factory=list)
    singles: list[int | None] = field(default_factory=list)  # per piece; None: no ink left
    merges: dict[int, int] = field(default_factory=dict)  # piece i joined with i + 1
    splits: dict[int, list[tuple[int, int]]] = field(default_factory=dict)  # piece i cut in two

    def add(self, crop: np.ndarray) -> int | None:
        done = to_mnist(crop)
        if done.blank:
            return None
        self.images.append(done.image)
        return len(self.images) - 1


def candidates(grey: np.ndarray) -> Candidates:
    """The segmenter's pieces, plus joined neighbours and cut wide pieces."""
    pieces = segment_digits(grey)
    found = Candidates()
    for piece in pieces:
        found.singles.append(found.add(piece.image))
    for i, (left, right) in enumerate(zip(pieces[:-1], pieces[1:], strict=True)):
        joined = _join(left, right)
        if joined is not None and (index := found.add(joined)) is not None:
            found.merges[i] = index
    for i, piece in enumerate(pieces):
        for left_part, right_part in _cuts(piece):
            a, b = found.add(left_part), found.add(right_part)
            if a is not None and b is not None:
                found.splits.setdefault(i, []).append((a, b))
    return found


def choose(found: Candidates, probs: np.ndarray) -> list[int]:
    """Indexes into found.images of the digits read, left to right.

    Dynamic programming over the pieces: a reading's score is the sum of the log
    probabilities of its digits, less the margin for every join or cut it makes."""
    logp = np.log(np.clip(probs.max(axis=1), 1e-12, 1.0)) if len(probs) else np.zeros(0)
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
        options.append((1, float(logp[single]) if single is not None else 0.0,
                        [single] if single is not None else []))
        for a, b in found.splits.get(i, []):
            options.append((1, float(logp[a] + logp[b]) - SPLIT_MARGIN, [a, b]))
        if i in found.merges:
            options.append((2, float(logp[found.merges[i]]) - MERGE_MARGIN, [found.merges[i]]))
        for step, gain, digits in options:
            if score + gain > best[i + step][0]:
                best[i + step] = (score + gain, read + digits)
    return best[n][1]


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


def _cuts(piece: Digit) -> list[tuple[np.ndarray, np.ndarray]]:
    """A wide piece cut down the column with the least ink in each window."""
    m = _margin(piece)
    if m is None:
        return []
    ink = piece.image[m : piece.image.shape[0] - m, m : piece.image.shape[1] - m]
    h, w = ink.shape
    if h == 0 or w < SPLIT_ASPECT * h:
        return []
    profile = ink.sum(axis=0)
    columns = set()
    for start, stop in SPLIT_WINDOWS:
        lo, hi = max(1, int(start * w)), min(w - 1, int(stop * w))
        if hi > lo:
            columns.add(lo + int(np.argmin(profile[lo:hi])))
    return [(piece.image[:, : m + c], piece.image[:, m + c :]) for c in sorted(columns)]
