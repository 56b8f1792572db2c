"""Augmentation for reading people's own handwriting, applied to whole training batches.

MNIST's writers used one kind of pen and one scanner. A digit a user photographs or draws
and that the preprocessing (vision/preprocess.py) brings to MNIST style still differs from
MNIST: strokes are thicker or thinner, edges softer or harder, ink fainter, the digit
slanted or rotated a little. Each of those is a few tensor ops on the whole batch here,
with per-image random strength, so the model has seen them all. Digits are never flipped.
Rotation, slant, scale and shift are data/augment.py's affine map; `HandwritingAugment`
runs that first (with the run's aug_* settings), then the changes here.

Images are [B, 1, 28, 28], normalised as the run says ("unit" or "standard"); the work is
done on the [0, 1] ink scale (ink bright on dark, as in MNIST) and normalised back. All
randomness comes from the torch.Generator handed in, so a seed fixes the result.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from digitlab.normalisation import from_unit, to_unit

P_THICKER, P_THINNER = 0.3, 0.15
P_BLUR = 0.3
BLUR_SIGMA = (0.5, 1.1)
P_CONTRAST = 0.3
P_GAPS = 0.2
GAP_GRID = 4  # control points per side of the fading field (~9 px apart)
GAP_MAX_LOSS = 0.25  # an image losing more of its ink than this is left whole

Generator = torch.Generator | None


def _rand(n: int, generator: Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device)


def _uniform(n: int, low: float, high: float, generator: Generator, device: torch.device
             ) -> torch.Tensor:
    return _rand(n, generator, device) * (high - low) + low


def dilate(x: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)


def erode(x: torch.Tensor) -> torch.Tensor:
    return -F.max_pool2d(-x, kernel_size=3, stride=1, padding=1)


def thickness(x: torch.Tensor, generator: Generator = None) -> torch.Tensor:
    """Thicker strokes for some images, thinner for others, by a random blend towards the
    dilated or eroded image (a full 3x3 erosion would wipe out MNIST's thin strokes)."""
    b, device = x.shape[0], x.device
    pick = _rand(b, generator, device)
    strength = _uniform(b, 0.3, 1.0, generator, device).view(b, 1, 1, 1)
    thicker = (pick < P_THICKER).view(b, 1, 1, 1)
    thinner = ((pick >= P_THICKER) & (pick < P_THICKER + P_THINNER)).view(b, 1, 1, 1)
    out = torch.where(thicker, x + (dilate(x) - x) * strength, x)
    return torch.where(thinner, x + (erode(x) - x) * (0.6 * strength), out)


def blur(x: torch.Tensor, generator: Generator = None) -> torch.Tensor:
    """Gaussian blur of random width (5x5 support) on a random share of the batch."""
    b, device = x.shape[0], x.device
    sigma = _uniform(b, *BLUR_SIGMA, generator, device)
    offsets = torch.arange(-2, 3, device=device, dtype=x.dtype)
    weights = torch.exp(-(offsets.view(1, -1) ** 2) / (2 * sigma.view(-1, 1) ** 2))  # [B, 5]
    weights = weights / weights.sum(dim=1, keepdim=True)
    kernels = (weights.view(b, 5, 1) * weights.view(b, 1, 5)).unsqueeze(1)  # [B, 1, 5, 5]
    # One group per image: each image gets its own kernel in a single conv call.
    blurred = F.conv2d(x.transpose(0, 1), kernels, padding=2, groups=b).transpose(0, 1)
    chosen = (_rand(b, generator, device) < P_BLUR).view(b, 1, 1, 1)
    return torch.where(chosen, blurred, x)


def contrast(x: torch.Tensor, generator: Generator = None) -> torch.Tensor:
    """Fainter or harsher ink: a random gamma and peak level on a random share of the batch."""
    b, device = x.shape[0], x.device
    gamma = torch.exp(_uniform(b, math.log(0.6), math.log(1.6), generator, device))
    peak = _uniform(b, 0.7, 1.0, generator, device).view(b, 1, 1, 1)
    changed = x.clamp(0, 1).pow(gamma.view(b, 1, 1, 1)) * peak
    chosen = (_rand(b, generator, device) < P_CONTRAST).view(b, 1, 1, 1)
    return torch.where(chosen, changed, x)


def gaps(x: torch.Tensor, generator: Generator = None) -> torch.Tensor:
    """Broken strokes on a random share of the batch: a pen that skips, a pencil that fades,
    as the preprocessing then sees them (it keeps ink above half contrast). A smooth random
    field dims the ink; where it falls below half strength the stroke is gone, elsewhere it
    is as it was. An image that would lose more than GAP_MAX_LOSS of its ink is left whole:
    a 7 without its bar is a 1, not a hard 7."""
    b, device = x.shape[0], x.device
    field = _uniform(b * GAP_GRID * GAP_GRID, 0.2, 1.6, generator, device)
    field = F.interpolate(field.view(b, 1, GAP_GRID, GAP_GRID).to(x.dtype), size=x.shape[-2:],
                          mode="bilinear", align_corners=True)
    broken = x * ((field - 0.4) / 0.2).clamp(0.0, 1.0)
    kept = broken.flatten(1).sum(1) / x.flatten(1).sum(1).clamp(min=1e-6)
    chosen = (_rand(b, generator, device) < P_GAPS) & (kept >= 1.0 - GAP_MAX_LOSS)
    return torch.where(chosen.view(b, 1, 1, 1), broken, x)


def augment_handwriting(x: torch.Tensor, *, normalize: str, generator: Generator = None
                        ) -> torch.Tensor:
    """Thickness, gaps, blur and contrast changes on one batch of normalised images."""
    unit = gaps(thickness(to_unit(x, normalize), generator), generator)
    unit = contrast(blur(unit, generator), generator).clamp_(0.0, 1.0)
    return from_unit(unit, normalize)


class HandwritingAugment:
    """The training hook (config `handwriting_augment`): the run's affine augmentation, if
    any, then `augment_handwriting`; called as augment(x, generator) like data/augment.py's."""

    def __init__(self, geometry: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None,
                 *, normalize: str) -> None:
        self.geometry = geometry
        self.normalize = normalize

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.geometry is not None:
            x = self.geometry(x, generator)
        return augment_handwriting(x, normalize=self.normalize, generator=generator)
