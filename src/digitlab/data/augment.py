"""Augmentation of whole batches on the device: one random affine map per image (rotation,
translation, scale, shear) and an optional smooth elastic distortion, applied with a single
grid_sample. Never a flip: every map keeps orientation (positive determinant), because a
mirrored 2, 3 or 7 is not a digit.

All randomness comes from the torch.Generator handed in, so a seed fixes the result.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from digitlab.data.loader import normalise
from digitlab.errors import DigitlabError

# Bounds that keep a digit a digit (and keep the determinant positive).
MAX_ROTATE = 45.0
MAX_SHEAR = 30.0
MAX_SCALE = 0.5
MAX_TRANSLATE = 8.0
MAX_ELASTIC = 6.0
ELASTIC_GRID = 4  # control points per side of the coarse random field (~9 px apart)


@dataclass(frozen=True)
class AugmentSpec:
    rotate: float = 0.0  # degrees, drawn from [-rotate, rotate]
    translate: float = 0.0  # pixels, per axis
    scale: float = 0.0  # fraction: factor drawn from [1 - scale, 1 + scale]
    shear: float = 0.0  # degrees, horizontal shear
    elastic: float = 0.0  # pixels: peak displacement of a smooth random field

    @property
    def active(self) -> bool:
        return any(v > 0 for v in asdict(self).values())

    def validate(self) -> AugmentSpec:
        limits = {"rotate": MAX_ROTATE, "translate": MAX_TRANSLATE, "scale": MAX_SCALE,
                  "shear": MAX_SHEAR, "elastic": MAX_ELASTIC}
        for name, limit in limits.items():
            value = getattr(self, name)
            if not 0 <= value <= limit:
                raise DigitlabError(f"augment {name} must be in [0, {limit}], got {value}")
        return self

    def describe(self) -> str:
        parts = [f"{k}={v:g}" for k, v in asdict(self).items() if v > 0]
        return ",".join(parts) or "none"


def parse_spec(text: str) -> AugmentSpec:
    """'rotate=20,translate=3,scale=0.1,shear=10,elastic=2' or 'none'; unnamed settings are 0."""
    text = text.strip()
    if text.lower() in ("", "none", "off"):
        return AugmentSpec()
    values: dict[str, float] = {}
    known = set(asdict(AugmentSpec()))
    for item in text.split(","):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in known:
            raise DigitlabError(
                f"--augment takes name=value pairs from {', '.join(sorted(known))} "
                f"(or 'none'); got {item.strip()!r}"
            )
        try:
            values[name] = float(value)
        except ValueError:
            raise DigitlabError(f"--augment {name} needs a number, got {value!r}") from None
    return AugmentSpec(**values).validate()


def background_value(normalize: str) -> float:
    """What an empty (black) pixel becomes after normalisation: the fill for uncovered areas."""
    return float(normalise(torch.zeros(1, 1, 1, dtype=torch.uint8), normalize).item())


class Augment:
    def __init__(self, spec: AugmentSpec, *, background: float = 0.0) -> None:
        self.spec = spec.validate()
        self.background = background

    def matrices(self, n: int, generator: torch.Generator, device: torch.device
                 ) -> torch.Tensor:
        """[n, 2, 3] sampling maps for affine_grid: output coordinates -> input coordinates,
        in the normalised [-1, 1] frame of a 28x28 image."""
        s = self.spec
        u = torch.rand(n, 5, generator=generator, device=device).mul_(2).sub_(1)  # [-1, 1)
        angle = u[:, 0] * math.radians(s.rotate)
        shear = u[:, 1] * math.radians(s.shear)
        factor = 1 + u[:, 2] * s.scale
        # forward map M = R(angle) @ Shear(shear) @ Scale(factor); sampling needs M^-1.
        cos, sin, tan = torch.cos(angle), torch.sin(angle), torch.tan(shear)
        m00, m01 = cos * factor, (cos * tan - sin) * factor
        m10, m11 = sin * factor, (sin * tan + cos) * factor
        det = m00 * m11 - m01 * m10  # = factor^2 > 0: orientation kept, never a flip
        inv = torch.stack([torch.stack([m11, -m01], 1), torch.stack([-m10, m00], 1)], 1)
        inv = inv / det[:, None, None]
        shift = u[:, 3:5] * (s.translate * 2 / 28)  # pixels -> normalised units
        offset = -(inv @ shift.unsqueeze(2))  # [n, 2, 1]
        return torch.cat([inv, offset], dim=2)

    def grid(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n = x.shape[0]
        grid = F.affine_grid(self.matrices(n, generator, x.device).to(x.dtype), list(x.shape),
                             align_corners=False)  # [n, H, W, 2]
        if self.spec.elastic > 0:
            k = ELASTIC_GRID
            coarse = torch.rand(n, 2, k, k, generator=generator, device=x.device)
            coarse = coarse.mul_(2).sub_(1).to(x.dtype)
            field = F.interpolate(coarse, size=x.shape[2:], mode="bicubic", align_corners=True)
            grid = grid + field.permute(0, 2, 3, 1) * (self.spec.elastic * 2 / x.shape[-1])
        return grid

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """x [B, C, H, W] normalised images -> augmented images of the same shape."""
        if not self.spec.active:
            return x
        return sample(x, self.grid(x, generator), self.background)


def sample(x: torch.Tensor, grid: torch.Tensor, background: float) -> torch.Tensor:
    # Shift so the background is 0: grid_sample fills uncovered pixels with zeros.
    out = F.grid_sample(x - background, grid, mode="bilinear", padding_mode="zeros",
                        align_corners=False)
    return out.add_(background)


def warp(x: torch.Tensor, *, rotate: float = 0.0, translate: tuple[float, float] = (0.0, 0.0),
         scale: float = 1.0, background: float = 0.0) -> torch.Tensor:
    """The same fixed transformation of every image (test-time augmentation): rotate by
    degrees, shift by (x, y) pixels, scale by a factor about the centre."""
    a = math.radians(rotate)
    cos, sin = math.cos(a) / scale, math.sin(a) / scale  # inverse map: output -> input
    tx, ty = (-2 * translate[0] / x.shape[-1], -2 * translate[1] / x.shape[-2])
    theta = torch.tensor([[cos, sin, cos * tx + sin * ty], [-sin, cos, -sin * tx + cos * ty]],
                         dtype=x.dtype, device=x.device).expand(x.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return sample(x, grid, background)


def step_seed(seed: int, rank: int, step: int) -> int:
    """A seed per (run seed, process, global step): the augmentation of a batch depends on
    nothing else, so a resumed or data-parallel run draws exactly what an uninterrupted one
    does, with no generator state to carry."""
    mixed = (seed * 0x9E3779B97F4A7C15 + rank * 0xBF58476D1CE4E5B9 + step * 0x94D049BB133111EB)
    return mixed % (2**63 - 1)
