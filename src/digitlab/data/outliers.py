"""Non-digits to train on: two handwritten digits fused into one piece, taught as "no digit".

When two digits of a written number touch, the segmenter (vision/segment.py) hands the
classifier both as one piece. A model trained on single digits only reads such a piece as
one digit, often with confidence, and the number comes out a digit short. Outlier exposure
(Hendrycks et al., ICLR 2019): show the model such pieces during training with a uniform
target, so that it answers them with low confidence; vision/number.py then prefers the reading
that cuts the piece in two, and a user who draws two digits in the single-digit box is told
the answer is unsure.

The pieces are made the way the reader sees them: two training digits cropped to their ink,
drawn at one height side by side, overlapping a little or just touching, one higher than
the other, then brought to 28x28 by vision/preprocess.to_mnist like any input. A batch gets
a share of them appended, labelled OUTLIER; engine/steps.py gives that label a uniform target.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from digitlab.errors import DigitlabError
from digitlab.vision.preprocess import to_mnist

OUTLIER = -1  # the label of a non-digit in a training batch
HEIGHT = (40, 72)  # px the two digits are drawn at before to_mnist
GAP = (-0.12, 0.0)  # space between the two ink boxes, share of the height (< 0: overlap)
WANDER = 0.15  # one digit sits up to this share of the height above or below the other
POOL = 6000  # fused pairs made once per run, drawn from at every batch


def fused_pairs(images: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` fused pairs of random digits from `images` (uint8 [N, 28, 28], white on
    black), as uint8 [count, 28, 28] MNIST-style pictures. Fixed by the generator's state."""
    out = np.zeros((count, 28, 28), np.uint8)
    made = tries = 0
    while made < count:
        tries += 1
        if tries > 10 * count + 100:  # images with no ink make no pairs: don't loop forever
            raise DigitlabError(f"could not make {count} fused pairs: the training images "
                                "are (nearly) blank")
        a, b = rng.integers(len(images), size=2)
        height = int(rng.integers(HEIGHT[0], HEIGHT[1] + 1))
        picture = side_by_side(digit_ink(images[a], height), digit_ink(images[b], height),
                               height, rng)
        done = to_mnist(picture)
        if not done.blank:
            out[made] = done.image
            made += 1
    return out


def side_by_side(left: np.ndarray, right: np.ndarray, height: int,
                 rng: np.random.Generator) -> np.ndarray:
    """Two ink pictures (floats in [0, 1]) touching or overlapping, on a black margin."""
    gap = int(round(rng.uniform(*GAP) * height))
    shift = int(round(rng.uniform(-WANDER, WANDER) * height))
    start = max(0, left.shape[1] + gap)
    wide = max(left.shape[1], start + right.shape[1])
    tall = height + abs(shift)
    row = np.zeros((tall, wide), np.float32)
    top_left, top_right = (0, shift) if shift >= 0 else (-shift, 0)
    row[top_left : top_left + left.shape[0], : left.shape[1]] = left
    region = row[top_right : top_right + right.shape[0], start : start + right.shape[1]]
    np.maximum(region, right, out=region)
    margin = height // 4
    return np.pad(row, margin)


def digit_ink(digit: np.ndarray, height: int) -> np.ndarray:
    """An MNIST digit (uint8 [28, 28]) cropped to its ink and scaled to `height` px keeping
    its aspect ratio: ink coverage in [0, 1]. A digit without ink: an empty half-square.
    (benchmarks/photolike.py draws its photos from the same.)"""
    ink = np.asarray(digit, dtype=np.float32) / 255.0
    rows = np.flatnonzero(ink.max(axis=1) > 0)
    cols = np.flatnonzero(ink.max(axis=0) > 0)
    if rows.size == 0:
        return np.zeros((height, max(1, height // 2)), np.float32)
    ink = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    width = max(1, round(ink.shape[1] * height / ink.shape[0]))
    scaled = Image.fromarray(ink).resize((width, height), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(scaled, dtype=np.float32), 0.0, 1.0)


class OutlierMix:
    """The training hook (config `outliers`): appends share x batch fused pairs, drawn from a
    pool made once from the training images, to every batch, labelled OUTLIER."""

    def __init__(self, images: torch.Tensor, share: float, seed: int,
                 normalise: Callable[[torch.Tensor], torch.Tensor], pool: int = POOL) -> None:
        # A tenth of the training set at most: a 512-image smoke test makes 64, not 6,000
        # (each costs a to_mnist call, milliseconds on a CPU core).
        pool = min(pool, max(64, len(images) // 10))
        made = fused_pairs(images.cpu().numpy(), pool, np.random.default_rng([seed, 404]))
        self.pool = torch.from_numpy(made).to(images.device)
        self.share = share
        self.normalise = normalise

    def __call__(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        extra = max(1, round(self.share * len(y)))
        pick = torch.randint(len(self.pool), (extra,), generator=generator,
                             device=self.pool.device)
        fused = self.normalise(self.pool[pick]).to(x.dtype)
        label = torch.full((extra,), OUTLIER, dtype=y.dtype, device=y.device)
        return torch.cat([x, fused]), torch.cat([y, label])
