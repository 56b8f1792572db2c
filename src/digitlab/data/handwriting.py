"""Augmentation for reading people's own handwriting, applied to whole training batches.

MNIST's writers used one kind of pen and one scanner. A digit a user photographs or draws
and that the preprocessing (vision/preprocess.py) brings to MNIST style still differs from
MNIST: strokes are thicker or thinner, edges softer or harder, ink fainter, the digit
slanted or rotated a little. Each of those is a few tensor ops on the whole batch here,
with per-image random strength, so the model has seen them all. Digits are never flipped.

Images are [B, 1, 28, 28], normalised as the run says ("unit" or "standard"); the work is
done on the [0, 1] ink scale (ink bright on dark, as in MNIST) and normalised back.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from digitlab.data.loader import MNIST_MEAN, MNIST_STD

# Strength of each change. Rotations past ~15 degrees start turning 6s and 9s, 1s and 7s
# into one another; MNIST's own slant already spans about that.
MAX_ROTATION_DEG = 12.0
MAX_SHEAR = 0.2
SCALE_RANGE = (0.85, 1.05)
MAX_SHIFT_PX = 1.0
P_THICKER, P_THINNER = 0.3, 0.15
P_BLUR = 0.3
BLUR_SIGMA = (0.5, 1.1)
P_CONTRAST = 0.3


def _uniform(n: int, low: float, high: float, device: torch.device) -> torch.Tensor:
    return torch.rand(n, device=device) * (high - low) + low


def affine(x: torch.Tensor) -> torch.Tensor:
    """Small random rotation, shear, scale and shift of each image. [B,1,H,W] -> same."""
    b, device = x.shape[0], x.device
    angle = _uniform(b, -MAX_ROTATION_DEG, MAX_ROTATION_DEG, device) * (math.pi / 180)
    shear = _uniform(b, -MAX_SHEAR, MAX_SHEAR, device)
    scale = _uniform(b, *SCALE_RANGE, device)
    # Half-range shift in normalised coordinates: 2 px of 28 is 2/14 of the half-width.
    shift = _uniform(2 * b, -MAX_SHIFT_PX, MAX_SHIFT_PX, device).view(b, 2) / (x.shape[-1] / 2)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # The grid maps output to input coordinates, so dividing by scale enlarges the digit.
    theta = torch.stack([
        torch.stack([cos / scale, (-sin + shear * cos) / scale, shift[:, 0]], dim=1),
        torch.stack([sin / scale, (cos + shear * sin) / scale, shift[:, 1]], dim=1),
    ], dim=1)  # [B, 2, 3]
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def dilate(x: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)


def erode(x: torch.Tensor) -> torch.Tensor:
    return -F.max_pool2d(-x, kernel_size=3, stride=1, padding=1)


def thickness(x: torch.Tensor) -> torch.Tensor:
    """Thicker strokes for some images, thinner for others, by a random blend towards the
    dilated or eroded image (a full 3x3 erosion would wipe out MNIST's thin strokes)."""
    b, device = x.shape[0], x.device
    pick = torch.rand(b, device=device)
    strength = _uniform(b, 0.3, 1.0, device).view(b, 1, 1, 1)
    thicker = (pick < P_THICKER).view(b, 1, 1, 1)
    thinner = ((pick >= P_THICKER) & (pick < P_THICKER + P_THINNER)).view(b, 1, 1, 1)
    thinner_strength = strength * 0.6
    out = torch.where(thicker, x + (dilate(x) - x) * strength, x)
    return torch.where(thinner, x + (erode(x) - x) * thinner_strength, out)


def blur(x: torch.Tensor) -> torch.Tensor:
    """Gaussian blur of random width (3x3 or 5x5 support) on a random share of the batch."""
    b, device = x.shape[0], x.device
    sigma = _uniform(b, *BLUR_SIGMA, device)
    offsets = torch.arange(-2, 3, device=device, dtype=x.dtype)
    weights = torch.exp(-(offsets.view(1, -1) ** 2) / (2 * sigma.view(-1, 1) ** 2))  # [B, 5]
    weights = weights / weights.sum(dim=1, keepdim=True)
    kernels = (weights.view(b, 5, 1) * weights.view(b, 1, 5)).unsqueeze(1)  # [B, 1, 5, 5]
    # One group per image: each image gets its own kernel in a single conv call.
    blurred = F.conv2d(x.transpose(0, 1), kernels, padding=2, groups=b).transpose(0, 1)
    chosen = (torch.rand(b, device=device) < P_BLUR).view(b, 1, 1, 1)
    return torch.where(chosen, blurred, x)


def contrast(x: torch.Tensor) -> torch.Tensor:
    """Fainter or harsher ink: a random gamma and peak level on a random share of the batch."""
    b, device = x.shape[0], x.device
    gamma = torch.exp(_uniform(b, math.log(0.6), math.log(1.6), device)).view(b, 1, 1, 1)
    peak = _uniform(b, 0.7, 1.0, device).view(b, 1, 1, 1)
    changed = x.clamp(0, 1).pow(gamma) * peak
    chosen = (torch.rand(b, device=device) < P_CONTRAST).view(b, 1, 1, 1)
    return torch.where(chosen, changed, x)


def augment_handwriting(x: torch.Tensor, *, normalize: str) -> torch.Tensor:
    """Every change above on one batch of normalised images; returns a new tensor."""
    unit = x * MNIST_STD + MNIST_MEAN if normalize == "standard" else x
    unit = contrast(blur(thickness(affine(unit)))).clamp_(0.0, 1.0)
    return (unit - MNIST_MEAN) / MNIST_STD if normalize == "standard" else unit
