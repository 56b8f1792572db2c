"""Outlier exposure: fused pairs of real MNIST digits made like the number reader's pieces,
taught as "no digit" (a uniform target), so that a trained model is unsure of them."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from digitlab.data import outliers
from digitlab.data.loader import DeviceData, Split
from digitlab.engine.steps import AutogradStep, soft_targets
from digitlab.vision.number import weights_for
from digitlab.vision.strokes import mask_bbox


def test_fused_pairs_are_wide_mnist_style_pictures_fixed_by_the_seed(mnist_train_split):
    images = mnist_train_split.images[:500]
    made = outliers.fused_pairs(images, 40, np.random.default_rng(3))
    again = outliers.fused_pairs(images, 40, np.random.default_rng(3))
    assert made.shape == (40, 28, 28) and made.dtype == np.uint8
    assert np.array_equal(made, again)
    assert not np.array_equal(made, outliers.fused_pairs(images, 40, np.random.default_rng(4)))
    aspects = []
    for picture in made:
        box = mask_bbox(picture > 64)
        assert box is not None
        aspects.append((box[3] - box[1]) / (box[2] - box[0]))
        # MNIST style: black border, the longer side of the ink at most 20 px.
        assert picture[:2].max() == 0 and picture[-2:].max() == 0
    # Two digits side by side are wider than high; single MNIST digits almost never are.
    assert np.median(aspects) > 1.3


def test_side_by_side_touches_or_overlaps():
    left = np.zeros((40, 20), np.float32)
    left[:, -3:] = 1.0  # a stroke down the right edge
    right = np.zeros((40, 20), np.float32)
    right[:, :3] = 1.0  # and one down the left edge
    for seed in range(20):
        row = outliers.side_by_side(left, right, 40, np.random.default_rng(seed))
        ink_cols = np.flatnonzero(row.max(axis=0) > 0.5)
        # One piece of ink: no empty column between the first and the last inked one.
        assert ink_cols[-1] - ink_cols[0] + 1 == len(ink_cols)


def test_a_non_digit_gets_the_uniform_target_and_digits_are_unchanged():
    y = torch.tensor([3, outliers.OUTLIER, 0])
    target = soft_targets(y, 10, 0.1, torch.float32)
    assert torch.allclose(target[1], torch.full((10,), 0.1))
    assert abs(float(target[0, 3]) - 0.91) < 1e-6 and abs(float(target[2, 0]) - 0.91) < 1e-6
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 10)
    x = torch.randn(3, 4)
    digits = y >= 0
    plain = AutogradStep(model, 0.1)(x[digits], y[digits])
    mixed = AutogradStep(model, 0.1, outliers=True)(x[digits], y[digits])
    assert torch.allclose(plain, mixed, atol=1e-6)  # the same loss on digits alone
    # A non-digit's loss is smallest when the model is equally unsure of all ten.
    flat = F.cross_entropy(torch.zeros(1, 10), target[1:2])
    sure = F.cross_entropy(torch.tensor([[5.0] + [0.0] * 9]), target[1:2])
    assert flat < sure


def test_the_mix_appends_labelled_pairs_to_a_batch(mnist_train_split):
    images = torch.from_numpy(mnist_train_split.images[:2000].copy())
    mix = outliers.OutlierMix(images, 0.25, seed=0, normalise=lambda raw: raw.float()[:, None])
    assert len(mix.pool) == 200  # a tenth of the images
    x, y = torch.zeros(16, 1, 28, 28), torch.arange(16) % 10
    gen = torch.Generator().manual_seed(1)
    mixed_x, mixed_y = mix(x, y, gen)
    assert mixed_x.shape == (20, 1, 28, 28) and mixed_y.tolist()[16:] == [outliers.OUTLIER] * 4
    assert torch.equal(mixed_x[:16], x) and mixed_x[16:].amax() > 0
    again = mix(x, y, torch.Generator().manual_seed(1))[0]
    assert torch.equal(again, mixed_x)


def test_training_with_outliers_makes_the_model_unsure_of_fused_pairs(
        mnist_train_split, mnist_test_split, tmp_path):
    from digitlab.api import Recognizer
    from digitlab.config import resolve
    from digitlab.console import Console
    from digitlab.engine.train import fit

    train = Split(mnist_train_split.images[:4000], mnist_train_split.labels[:4000])
    test = Split(mnist_test_split.images[:1000], mnist_test_split.labels[:1000])
    # Pairs of test digits: none of them was in the pool the model trained on.
    pairs = outliers.fused_pairs(mnist_test_split.images[1000:], 200, np.random.default_rng(9))

    def confident(share: float) -> tuple[float, float]:
        cfg = resolve(preset="robust", flags={"device": "cpu", "epochs": 3, "outliers": share})
        data = (DeviceData.from_split(train, torch.device("cpu"), cfg.normalize, lazy=True),
                DeviceData.from_split(test, torch.device("cpu"), cfg.normalize, lazy=True), None)
        run = tmp_path / f"share-{share}"
        result = fit(cfg, out=run, console=Console(quiet=True), preloaded=data)
        # How many pairs the model reads as one digit with confidence.
        recognizer = Recognizer.load(run)
        assert recognizer.reading is weights_for(share)  # --number knows how it was trained
        on_pairs = (recognizer.classify(pairs).max(axis=1) > 0.7).mean()
        return float(on_pairs), result.final.accuracy

    sure_without, acc_without = confident(0.0)
    sure_with, acc_with = confident(0.2)
    assert sure_with < 0.5 * sure_without, (sure_with, sure_without)  # e.g. 6% against 26%
    assert acc_with > acc_without - 0.02, (acc_with, acc_without)  # digits still read as well


def test_blank_training_images_are_an_error_not_an_endless_loop():
    import pytest

    from digitlab.errors import DigitlabError

    with pytest.raises(DigitlabError, match="blank"):
        outliers.fused_pairs(np.zeros((20, 28, 28), np.uint8), 5, np.random.default_rng(0))
