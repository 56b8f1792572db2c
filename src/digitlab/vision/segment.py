"""Split a picture of a written number into one picture per digit, left to right.

Connected pieces of ink are the starting point; handwriting breaks that in two ways.
A digit drawn in several strokes (or a stroke that skipped) comes in pieces stacked
above one another, so pieces that share most of their columns are one digit. Digits
written close together touch, so a piece much wider than a digit is cut at the columns
with the least ink near where the digits' boundaries should be.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from digitlab.vision.preprocess import InkMap, ink_map, resize
from digitlab.vision.strokes import BBox, mask_bbox, stroke_width

MERGE_OVERLAP = 0.5  # shared columns / the narrower piece's width above which pieces join
DIGIT_ASPECT = 0.75  # median width / height of an MNIST digit
# A piece this many typical digit widths wide (1.2x its height when nothing else is known)
# holds touching digits. Narrower, it is more likely one wide digit: 5% of MNIST digits
# are wider than 1.2x their height. On photo-like strips of MNIST digits 1.6 miscounted
# least (1.4: 18%, 1.5: 13%, 1.6: 9%, 1.7: 10% of numbers).
SPLIT_WIDTHS = 1.6
PART_HEIGHT = 0.6  # each of the touching digits spans at least this share of their height
CUT_WINDOW = 0.3  # search for a cut within this share of a digit width of where it should be
MIN_HEIGHT = 0.4  # pieces shorter than this share of the tallest are dots, commas, dashes
LOOSE = 0.25  # ... or, this long and over a digit, a loose stroke of it (segment._drop_small)
MARGIN = 0.15  # black border around each crop, as a share of its height


@dataclass(frozen=True)
class Digit:
    """One digit cut out of a number: `image` is float32 grey, white ink on black."""

    image: np.ndarray
    bbox: BBox  # where it was in the input picture (y0, x0, y1, x1), ends exclusive


@dataclass(frozen=True)
class _Piece:
    labels: frozenset[int]  # connected components that belong to this digit
    box: BBox  # in ink-map pixels


def segment_digits(grey: np.ndarray) -> list[Digit]:
    """One grey crop per digit, left to right, each ready for `to_mnist`, with its box in
    the input picture; [] when blank."""
    ink = ink_map(grey)
    if ink.blank:
        return []
    labels, _ = ndimage.label(ink.mask, structure=np.ones((3, 3)))
    pieces = _drop_small(_merge_overlapping(_components(labels)))
    typical = _typical_width(pieces)
    pieces = [
        part for piece in pieces for part in _split_touching(piece, typical, ink.soft, labels)
    ]
    pieces.sort(key=lambda p: p.box[1] + p.box[3])
    digits = (_cut_out(piece, ink, labels) for piece in pieces)
    return [digit for digit in digits if digit is not None]


def _components(labels: np.ndarray) -> list[_Piece]:
    pieces = []
    for index, found in enumerate(ndimage.find_objects(labels), start=1):
        if found is not None:
            rows, cols = found
            box = (rows.start, cols.start, rows.stop, cols.stop)
            pieces.append(_Piece(frozenset({index}), box))
    return pieces


def _merge_overlapping(pieces: list[_Piece]) -> list[_Piece]:
    """Join pieces stacked in the same columns until no two overlap strongly. A line
    under or over the number (short, and longer than any digit is tall) joins none: it
    would glue together every digit it spans."""
    if not pieces:
        return pieces
    tallest = _tallest(pieces)
    lines = [p for p in pieces if _line(p, tallest)]
    pieces = sorted((p for p in pieces if not _line(p, tallest)), key=lambda p: p.box[1])
    merged = True
    while merged:
        merged = False
        for i in range(len(pieces)):
            for j in range(i + 1, len(pieces)):
                if _same_digit(pieces[i], pieces[j]):
                    pieces[i] = _join(pieces[i], pieces[j])
                    del pieces[j]
                    merged = True
                    break
            if merged:
                break
    return pieces + lines


def _same_digit(a: _Piece, b: _Piece) -> bool:
    shared = _shared(a, b)
    narrower = min(a.box[3] - a.box[1], b.box[3] - b.box[1])
    return shared > 0 and shared >= MERGE_OVERLAP * narrower


def _join(a: _Piece, b: _Piece) -> _Piece:
    box = (
        min(a.box[0], b.box[0]),
        min(a.box[1], b.box[1]),
        max(a.box[2], b.box[2]),
        max(a.box[3], b.box[3]),
    )
    return _Piece(a.labels | b.labels, box)


def _drop_small(pieces: list[_Piece]) -> list[_Piece]:
    """Keep the pieces tall enough to be digits. A shorter one that lies over a digit's
    columns is a stroke of it that came loose (a 5's bar, a 2's foot) and joins it: the
    digit whose columns hold the stroke's left end (where the pen came back to the paper),
    else the one it shares most columns with. The rest are dots, commas, dashes, lines."""
    if not pieces:
        return pieces
    tallest = _tallest(pieces)
    keep = [p for p in pieces if not _short(p, tallest)]
    for small in pieces:
        if not _short(small, tallest) or _line(small, tallest):
            continue
        if max(small.box[2] - small.box[0], small.box[3] - small.box[1]) < LOOSE * tallest:
            continue  # a dot or a speck
        near = [k for k, p in enumerate(keep) if _shared(p, small) > 0
                and small.box[0] < p.box[2] + LOOSE * tallest
                and small.box[2] > p.box[0] - LOOSE * tallest]
        if not near:
            continue
        holds = [k for k in near if keep[k].box[1] <= small.box[1] < keep[k].box[3]]
        k = holds[0] if holds else max(near, key=lambda k: _shared(keep[k], small))
        keep[k] = _join(keep[k], small)
    return keep


def _tallest(pieces: list[_Piece]) -> int:
    return max(p.box[2] - p.box[0] for p in pieces)


def _short(piece: _Piece, tallest: int) -> bool:
    """Too short to be a digit: a dot, comma, dash, line or loose stroke."""
    return piece.box[2] - piece.box[0] < MIN_HEIGHT * tallest


def _line(piece: _Piece, tallest: int) -> bool:
    """A line under or over the number: short, and longer than any digit is tall."""
    return _short(piece, tallest) and piece.box[3] - piece.box[1] > tallest


def _shared(a: _Piece, b: _Piece) -> int:
    """Columns two pieces' boxes have in common."""
    return min(a.box[3], b.box[3]) - max(a.box[1], b.box[1])


def _typical_width(pieces: list[_Piece]) -> float | None:
    """Median digit width in this number; narrow 1s count as average-width digits."""
    if len(pieces) < 3:
        return None  # too few to tell a wide digit from two touching ones
    widths = [max(p.box[3] - p.box[1], DIGIT_ASPECT * (p.box[2] - p.box[0])) for p in pieces]
    return float(np.median(widths))


def _split_touching(
    piece: _Piece, typical: float | None, soft: np.ndarray, labels: np.ndarray
) -> list[_Piece]:
    """Cut a piece much wider than one digit where the ink is thinnest between digits."""
    y0, x0, y1, x1 = piece.box
    height, width = y1 - y0, x1 - x0
    digits = width / (typical or DIGIT_ASPECT * height)
    if digits < SPLIT_WIDTHS:
        return [piece]
    count = max(2, round(digits))
    own = np.isin(labels[y0:y1, x0:x1], list(piece.labels))
    cost = _cut_cost(own, soft[y0:y1, x0:x1] * own)
    cuts = [_best_cut(cost, k * width / count, width / count) for k in range(1, count)]
    edges = [0, *sorted(set(cuts)), width]
    spans = list(zip(edges[:-1], edges[1:], strict=True))
    # Touching digits each fill most of the height; a cut through one wide digit (the bar
    # of a 7, the tail of a 2) leaves a short part, so such cuts are refused.
    if any(_ink_height(own[:, left:right]) < PART_HEIGHT * height for left, right in spans):
        return [piece]
    return [replace(piece, box=(y0, x0 + left, y1, x0 + right)) for left, right in spans]


def _cut_cost(own: np.ndarray, ink: np.ndarray) -> np.ndarray:
    """How bad a cut down each column is: the strokes it crosses, then the ink it cuts.

    Where two digits touch, a cut crosses one stroke (the joint); inside most digits it
    crosses two or more (the top and bottom of a 0). The ink amount breaks ties.
    """
    strokes = (own[1:] & ~own[:-1]).sum(axis=0) + own[0]
    return strokes + 0.5 * ink.sum(axis=0) / max(float(ink.sum(axis=0).max()), 1e-6)


def _ink_height(own: np.ndarray) -> int:
    rows = np.flatnonzero(own.any(axis=1))
    return int(rows[-1] - rows[0] + 1) if rows.size else 0


def _best_cut(cost: np.ndarray, expected: float, digit_width: float) -> int:
    """The cheapest column near `expected`; nearer columns win between equal costs."""
    reach = max(1, round(CUT_WINDOW * digit_width))
    lo = max(1, round(expected) - reach)
    hi = min(len(cost) - 1, round(expected) + reach + 1)
    if hi <= lo:
        return round(expected)
    columns = np.arange(lo, hi)
    penalty = 0.5 * np.abs(columns - expected) / reach
    return int(columns[np.argmin(cost[lo:hi] + penalty)])


def _cut_out(piece: _Piece, ink: InkMap, labels: np.ndarray) -> Digit | None:
    """The piece's own ink (not a neighbour's) with a black margin around it."""
    y0, x0, y1, x1 = piece.box
    own = np.isin(labels[y0:y1, x0:x1], list(piece.labels))
    # The soft anti-aliased fringe lies just outside the mask; keep it.
    crop = ink.soft[y0:y1, x0:x1] * ndimage.binary_dilation(own, iterations=2)
    box = mask_bbox(crop > 0)
    if box is None:
        return None
    crop = crop[box[0] : box[2], box[1] : box[3]]
    margin = max(2, round(MARGIN * crop.shape[0]))
    image = np.pad(crop, margin).astype(np.float32)
    found = (y0 + box[0], x0 + box[1], y0 + box[2], x0 + box[3])
    return Digit(image, ink.to_input(found))


# --- cutting one piece in two or three, for the number reader to check ------------------
#
# segment_digits decides from the ink alone; vision/number.py lets the classifier check
# it, and offers it these cuts of each piece. A straight cut between digits that overlap
# slices off part of one of them, so cuts follow the cheapest path down through the ink.

CUT_REACH = 0.15  # a cut path drifts at most this share of the piece's height sideways ...
CUT_DRIFT = 0.3  # ... and pays this much ink (pixels' worth) for each pixel it drifts
CUT_STROKES = 2.5  # paths crossing more than this many stroke widths of ink are not cuts
CUT_SPACING = 0.15  # cuts (and a cut and the piece's side) at least this share of its height apart
MAX_CUTS = 4  # per piece, the cheapest ones
CUT_SIDE = 40  # cut paths are searched on a copy of the piece this many px high
CUT_FROM = 0.5  # pieces narrower than this share of their height are not cut
THREE_FROM = 1.1  # pieces this many times as wide as high may be three digits
STRAIGHT_WINDOWS = ((0.15, 0.35), (0.35, 0.65), (0.65, 0.85))  # shares of a piece's width


def cut_options(image: np.ndarray) -> list[tuple[list[np.ndarray], float]]:
    """Ways to cut one crop (from `segment_digits`) into two or three digits: each a list of
    crops left to right in the same frame (the rest of the ink blanked out), and how much
    ink the cuts cross, in stroke widths (one per cut where touching digits are parted)."""
    own = image >= 0.5
    box = mask_bbox(own)
    if box is None:
        return []
    y0, x0, y1, x1 = box
    height, width = y1 - y0, x1 - x0
    if width < CUT_FROM * height:
        return []
    piece_own = own[y0:y1, x0:x1]
    piece_ink = image[y0:y1, x0:x1] * piece_own
    paths = _cut_paths_scaled(piece_ink, piece_own)
    paths += _straight_cuts(piece_ink, piece_own, height, [int(p[0].mean()) for p in paths])
    paths.sort(key=lambda p: float(p[0].mean()))
    columns = np.arange(image.shape[1])[None, :]
    sides = []
    for path, _ in paths:
        line = np.full(image.shape[0], x0 + path[0], np.int64)
        line[y0:y1] = x0 + path
        line[:y0], line[y1:] = x0 + path[0], x0 + path[-1]
        sides.append(columns < line[:, None])  # left of the cut
    options = [([image * left, image * ~left], cost)
               for left, (_, cost) in zip(sides, paths, strict=True)]
    if width >= THREE_FROM * height:
        for a in range(len(sides)):
            for b in range(a + 1, len(sides)):
                middle = sides[b] & ~sides[a]
                if _ink_height(own & middle) >= PART_HEIGHT * height:
                    options.append(([image * sides[a], image * middle, image * ~sides[b]],
                                    paths[a][1] + paths[b][1]))
    return options


def _straight_cuts(ink: np.ndarray, own: np.ndarray, height: float, taken: list[int]
                   ) -> list[tuple[np.ndarray, float]]:
    """Straight cuts down the column with the least ink in each of STRAIGHT_WINDOWS (a
    narrow 1 leaning on a digit joins it near one side, two equal digits in the middle),
    where no path cut is near; with the ink they cross in stroke widths."""
    h, w = ink.shape
    spacing = max(2, round(CUT_SPACING * height))
    profile = ink.sum(axis=0)
    stroke = max(1.0, stroke_width(own))
    out = []
    for start, stop in STRAIGHT_WINDOWS:
        lo, hi = max(1, int(start * w)), min(w - 1, int(stop * w))
        if hi <= lo:
            continue
        column = lo + int(np.argmin(profile[lo:hi]))
        if any(abs(column - other) < spacing // 2 for other in taken):
            continue
        left = own[:, :column]
        if min(_ink_height(left), _ink_height(own[:, column:])) >= PART_HEIGHT * height:
            out.append((np.full(h, column, np.int64), float(profile[column]) / stroke))
            taken = [*taken, column]
    return out


def _cut_paths_scaled(ink: np.ndarray, own: np.ndarray) -> list[tuple[np.ndarray, float]]:
    """`_cut_paths` on a copy at most CUT_SIDE px high (a cut needs no finer detail, and
    the search costs height x width x reach), the paths brought back to full size."""
    h, w = ink.shape
    factor = h / CUT_SIDE
    if factor <= 1.0:
        return _cut_paths(ink, own, float(h))
    shape = (CUT_SIDE, max(1, round(w / factor)))
    small_ink = resize(ink, shape)
    small_own = resize(own.astype(np.float32), shape) >= 0.5
    found = _cut_paths(small_ink, small_own, float(CUT_SIDE))
    rows = np.minimum((np.arange(h) / factor).astype(np.int64), CUT_SIDE - 1)
    scale = w / shape[1]
    return [(np.clip(np.round(path[rows] * scale).astype(np.int64), 0, w), cost)
            for path, cost in found]


def _step(cost: np.ndarray, drift: float) -> tuple[np.ndarray, np.ndarray]:
    """One row of the path search: for each (start, offset), which move is cheapest (0 stay,
    1 from the column to the left, 2 from the right; the first of the cheapest, as argmin
    over the three picks it) and its cost. Three-way minimum without stacking the options."""
    from_left = np.full(cost.shape, np.inf)
    from_right = np.full(cost.shape, np.inf)
    np.add(cost[:, :-1], drift, out=from_left[:, 1:])
    np.add(cost[:, 1:], drift, out=from_right[:, :-1])
    side = np.minimum(from_left, from_right)
    stay = cost <= side
    return (np.where(stay, 0, np.where(from_left <= from_right, 1, 2)),
            np.where(stay, cost, side))


def _cut_paths(ink: np.ndarray, own: np.ndarray, height: float
               ) -> list[tuple[np.ndarray, float]]:
    """Paths from top to bottom of a piece (one column per row) that cross little ink, each
    starting at its own column and drifting at most CUT_REACH of the height sideways.

    Touching digits meet at a joint, so a path down the gap between them crosses one short
    stroke; inside a digit a path crosses two or more. Returns the cheapest paths that
    leave a tall part on either side, at least CUT_SPACING apart, left to right, each with
    the ink it crosses in stroke widths.
    """
    h, w = ink.shape
    reach = max(1, round(CUT_REACH * height))
    spacing = max(2, round(CUT_SPACING * height))
    if w < 2 * spacing:
        return []
    offsets = np.arange(-reach, reach + 1)[None, :]
    cols = np.arange(w)[:, None] + offsets  # [w, 2r+1]: column of each (start, offset)
    outside = (cols < 0) | (cols >= w)
    cols = np.clip(cols, 0, w - 1)
    cost = np.where(offsets == 0, ink[0, cols], np.inf)
    moves = np.zeros((h, w, 2 * reach + 1), np.int8)
    for y in range(1, h):
        moves[y], cost = _step(cost, CUT_DRIFT)
        cost += ink[y, cols]
        cost[outside] = np.inf
    end = cost.argmin(axis=1)
    total = cost[np.arange(w), end]
    stroke = max(1.0, stroke_width(own))
    chosen: dict[int, tuple[np.ndarray, float]] = {}
    columns = np.arange(w)[None, :]
    for start in np.argsort(total, kind="stable"):
        if total[start] > CUT_STROKES * stroke or len(chosen) == MAX_CUTS:
            break
        if start < spacing or start > w - spacing:
            continue
        if any(abs(start - other) < spacing for other in chosen):
            continue
        offset = int(end[start])
        path = np.empty(h, np.int64)
        for y in range(h - 1, -1, -1):
            path[y] = start + offset - reach
            move = moves[y, start, offset]
            offset += 0 if move == 0 else (-1 if move == 1 else 1)
        left = own & (columns < path[:, None])
        # Touching digits each fill most of the height; a cut that leaves a short part
        # goes through one digit (the bar of a 7, the tail of a 2).
        if min(_ink_height(left), _ink_height(own & ~left)) >= PART_HEIGHT * height:
            chosen[int(start)] = (path, float(total[start]) / stroke)
    return [chosen[start] for start in sorted(chosen)]
