"""Batch augmentation: seeded, never a flip, background kept, every transform does its job."""

from __future__ import annotations

import math

import pytest
import torch

from digitlab.data.augment import (
    Augment,
    AugmentSpec,
    background_value,
    parse_spec,
    step_seed,
    warp,
)
from digitlab.errors import DigitlabError
from digitlab.normalisation import MNIST_MEAN, MNIST_STD


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_same_seed_same_batch_other_seed_other_batch(tiny_data):
    aug = Augment(AugmentSpec(rotate=20, translate=3, scale=0.1, shear=10, elastic=2))
    x = tiny_data.x[:32]
    a, b, c = aug(x, _gen(5)), aug(x, _gen(5)), aug(x, _gen(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape == x.shape and not torch.equal(a, x)


def test_no_spec_is_the_identity(tiny_data):
    assert Augment(AugmentSpec())(tiny_data.x, _gen(0)) is tiny_data.x


def test_never_a_flip_even_at_the_limits():
    aug = Augment(AugmentSpec(rotate=45, translate=8, scale=0.5, shear=30))
    theta = aug.matrices(20000, _gen(1), torch.device("cpu"))
    det = torch.linalg.det(theta[:, :, :2])
    assert (det > 0).all()
    # the sampled parameters really span their ranges (not a degenerate draw)
    factor = 1 / det.sqrt()
    assert factor.min() < 0.55 and factor.max() > 1.45


def test_translation_moves_a_dot_by_whole_pixels():
    x = torch.zeros(1, 1, 28, 28)
    x[0, 0, 10, 10] = 1.0
    moved = warp(x, translate=(2.0, -3.0))
    assert moved[0, 0].argmax().item() == (10 - 3) * 28 + (10 + 2)
    assert moved.sum().item() == pytest.approx(1.0, abs=1e-5)


def test_rotation_turns_a_bar_by_the_angle():
    x = torch.zeros(1, 1, 28, 28)
    x[0, 0, 13:15, 4:24] = 1.0  # horizontal bar through the centre
    turned = warp(x, rotate=90.0)[0, 0]
    ys, xs = torch.nonzero(turned > 0.5, as_tuple=True)
    assert xs.float().std() < 1.0 and ys.float().std() > 4.0  # now vertical
    half = warp(x, rotate=30.0)[0, 0]
    ys, xs = torch.nonzero(half > 0.5, as_tuple=True)
    slope = torch.linalg.lstsq(torch.stack([xs.float(), torch.ones_like(xs.float())], 1),
                               ys.float()[:, None]).solution[0].item()
    assert abs(math.degrees(math.atan(abs(slope))) - 30) < 4


@pytest.mark.parametrize("normalize", ["unit", "standard"])
def test_uncovered_pixels_become_background_not_zero(normalize):
    bg = background_value(normalize)
    expected = 0.0 if normalize == "unit" else -MNIST_MEAN / MNIST_STD
    assert bg == pytest.approx(expected, abs=1e-6)
    x = torch.full((4, 1, 28, 28), bg)
    out = Augment(AugmentSpec(rotate=40, translate=8, scale=0.4, elastic=3),
                  background=bg)(x, _gen(0))
    torch.testing.assert_close(out, x)


def test_elastic_distortion_is_smooth_and_bounded():
    aug = Augment(AugmentSpec(elastic=2.0))
    x = torch.zeros(8, 1, 28, 28)
    grid = aug.grid(x, _gen(3))
    base = torch.nn.functional.affine_grid(torch.eye(2, 3).expand(8, 2, 3), [8, 1, 28, 28],
                                           align_corners=False)
    shift = (grid - base) * 14  # normalised units -> pixels
    assert shift.abs().max() <= 2.0 * 1.3 and shift.abs().max() > 0.5
    # neighbouring pixels move almost together (smooth, not per-pixel noise) and never
    # swap places (no folding)
    assert (shift[:, 1:] - shift[:, :-1]).abs().max() < 0.75
    assert (shift[:, :, 1:] - shift[:, :, :-1]).abs().max() < 0.75


def test_spec_parsing_and_limits():
    assert parse_spec("rotate=20, translate=3") == AugmentSpec(rotate=20, translate=3)
    assert parse_spec("none") == AugmentSpec()
    assert parse_spec("rotate=15,scale=0.1").describe() == "rotate=15,scale=0.1"
    with pytest.raises(DigitlabError, match="name=value pairs"):
        parse_spec("flip=1")
    with pytest.raises(DigitlabError, match="needs a number"):
        parse_spec("rotate=lots")
    with pytest.raises(DigitlabError, match=r"rotate must be in \[0, 45"):
        parse_spec("rotate=90")
    with pytest.raises(DigitlabError, match="scale must be"):
        AugmentSpec(scale=1.2).validate()


def test_step_seeds_differ_by_seed_rank_and_step():
    seeds = {step_seed(s, r, t) for s in range(3) for r in range(2) for t in range(100)}
    assert len(seeds) == 600
    assert all(0 <= s < 2**63 for s in seeds)
