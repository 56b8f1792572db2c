"""The handwriting augmentation: thickness, blur and contrast changes on whole batches after
the affine map, never a mirror image, background kept, reproducible from the seed, and
hooked into training by the `robust` preset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from digitlab.data import handwriting as hw
from digitlab.data.loader import normalise
from digitlab.normalisation import MNIST_MEAN, MNIST_STD


def _ell(batch: int = 64) -> torch.Tensor:
    """An 'L': clearly different from its mirror image. [B, 1, 28, 28] in [0, 1]."""
    x = torch.zeros(batch, 1, 28, 28)
    x[:, :, 6:22, 9:12] = 1.0
    x[:, :, 19:22, 9:20] = 1.0
    return x


def test_dilate_and_erode_change_stroke_width_by_one_pixel_each_side():
    line = torch.zeros(1, 1, 28, 28)
    line[..., 5:23, 13:16] = 1.0  # a 3-px-wide vertical stroke
    assert (hw.dilate(line)[0, 0, 14] > 0).sum() == 5
    assert (hw.erode(line)[0, 0, 14] > 0).sum() == 1


def test_each_change_keeps_shape_and_range_and_changes_some_images():
    torch.manual_seed(0)
    x = _ell(256)
    for change in (hw.thickness, hw.blur, hw.contrast):
        out = change(x)
        assert out.shape == x.shape and out.dtype == x.dtype
        assert out.min() >= 0 and out.max() <= 1 + 1e-6
        changed = (out - x).abs().flatten(1).amax(1) > 1e-3
        assert 0 < changed.sum() <= 256, change.__name__
    thicker = hw.dilate(x).sum() > x.sum() > hw.erode(x).sum()
    assert thicker


def test_thickness_makes_some_strokes_thicker_and_some_thinner():
    torch.manual_seed(1)
    x = _ell(512)
    ink = hw.thickness(x).flatten(1).sum(1)
    before = x.flatten(1).sum(1)
    assert (ink > before * 1.1).float().mean() > 0.15
    assert (ink < before * 0.9).float().mean() > 0.05


def _hook(normalize: str = "unit") -> hw.HandwritingAugment:
    from digitlab.data.augment import Augment, AugmentSpec, background_value

    geometry = Augment(AugmentSpec(rotate=10, translate=1.5, scale=0.1, shear=8),
                       background=background_value(normalize))
    return hw.HandwritingAugment(geometry, normalize=normalize)


def test_never_mirrors_a_digit():
    x = _ell(512)
    out = _hook()(x, torch.Generator().manual_seed(2))
    mirror = x.flip(-1)

    def corr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a, b = a.flatten(1) - a.flatten(1).mean(1, keepdim=True), b.flatten(1) - b.flatten(
            1).mean(1, keepdim=True)
        return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + 1e-9)

    assert bool((corr(out, x) > corr(out, mirror)).all())


def test_standard_normalisation_round_trips_and_background_stays_black():
    x = normalise((_ell(64) * 255).to(torch.uint8).squeeze(1), "standard")
    out = _hook("standard")(x, torch.Generator().manual_seed(3))
    background = -MNIST_MEAN / MNIST_STD
    corners = out[..., :2, :2]
    assert torch.allclose(corners, torch.full_like(corners, background), atol=1e-5)
    assert out.max() <= (1 - MNIST_MEAN) / MNIST_STD + 1e-5


def test_same_seed_same_batch():
    x = _ell(32)
    a = _hook()(x, torch.Generator().manual_seed(7))
    b = _hook()(x, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    assert not torch.equal(a, _hook()(x, torch.Generator().manual_seed(8)))


@pytest.mark.slow
def test_real_digits_stay_recognisable_in_shape(mnist_test_split):
    """Augmented MNIST digits keep most of their ink and nearly all stay inside the frame."""
    torch.manual_seed(4)
    images = torch.from_numpy(np.array(mnist_test_split.images[:500]))
    x = normalise(images, "unit")
    out = _hook()(x, torch.Generator().manual_seed(4))
    ratio = out.flatten(1).sum(1) / x.flatten(1).sum(1)
    assert float(ratio.min()) > 0.2 and float(ratio.max()) < 4.0
    border = torch.cat([out[..., 0, :], out[..., -1, :], out[..., :, 0], out[..., :, -1]], -1)
    touching = (border.flatten(1).amax(1) > 0.5).float().mean()
    assert float(touching) < 0.06  # MNIST itself: ~1%; the ink is cut off, not lost


def test_robust_preset_trains_with_the_hook():
    from digitlab.config import resolve
    from digitlab.data.loader import DeviceData
    from digitlab.engine.trainer import Trainer

    cfg = resolve(preset="robust", flags={"device": "cpu"})
    assert cfg.handwriting_augment and cfg.aug_rotate > 0
    assert not resolve(preset="fast").handwriting_augment
    trainer = Trainer(cfg, torch.device("cpu"))
    assert isinstance(trainer.augment, hw.HandwritingAugment)
    x = normalise((_ell(16).squeeze(1) * 255).to(torch.uint8), cfg.normalize)
    y = torch.zeros(16, dtype=torch.long)
    shown = trainer.samples(DeviceData(x, y))
    assert not torch.equal(shown, x)  # the model is shown changed digits
    trainer.plan(4096)  # a schedule long enough for one-cycle's warm-up
    trainer.start_epoch(16)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    loss = trainer.train_batch(x, y)
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(),
                                                      strict=True))


def test_gaps_break_strokes_but_never_take_much_of_a_digit(mnist_test_split, monkeypatch):
    monkeypatch.setattr(hw, "P_GAPS", 1.0)
    x = torch.from_numpy(mnist_test_split.images[:256].copy()).float()[:, None] / 255
    out = hw.gaps(x, torch.Generator().manual_seed(0))
    assert torch.all(out <= x + 1e-6)  # ink is only taken away
    changed = (x - out).flatten(1).amax(1) > 0.5  # some stroke is gone
    assert 0.2 * len(x) < changed.sum() < len(x)
    kept = out.flatten(1).sum(1) / x.flatten(1).sum(1)
    assert kept.min() >= 1 - hw.GAP_MAX_LOSS - 1e-6
    # Seeded: the same generator state breaks the same strokes.
    assert torch.equal(out, hw.gaps(x, torch.Generator().manual_seed(0)))
