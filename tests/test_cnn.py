"""The convolutional families: shapes, arguments, and rebuilding from a weights file alone."""

from __future__ import annotations

import pytest
import torch

from digitlab.engine.rundir import load_model, save_weights
from digitlab.errors import DigitlabError
from digitlab.models.cnn import BEST_CHANNELS
from digitlab.models.registry import count_parameters, create_model, model_args


def test_lenet5_is_the_classic():
    model = create_model("lenet5")
    assert count_parameters(model) == 61_706  # LeCun 1998's layer sizes
    assert [tuple(m.weight.shape) for m in model.modules() if hasattr(m, "weight")] == [
        (6, 1, 5, 5), (16, 6, 5, 5), (120, 400), (84, 120), (10, 84)]
    assert "Tanh" in str(model) and "AvgPool2d" in str(model)
    assert "MaxPool2d" in str(create_model("lenet5", activation="relu", pool="max"))


@pytest.mark.parametrize("kernel", sorted(BEST_CHANNELS))
def test_cnn_best_reference_stacks(kernel):
    model = create_model("cnn-best", kernel=kernel).eval()
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == list(BEST_CHANNELS[kernel])
    assert all(c.kernel_size == (kernel, kernel) and c.padding == (0, 0) for c in convs)
    assert not any(isinstance(m, torch.nn.MaxPool2d | torch.nn.AvgPool2d)
                   for m in model.modules())
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_cnn_fast_shapes_and_options():
    for args in ({}, {"channels": [8, 16], "hidden": 0}, {"kernels": [3, 3]},
                 {"batchnorm": False, "hidden": 32}, {"stem": "unshuffle", "kernels": [3, 3]},
                 {"stem": "unshuffle", "kernels": [5, 2], "dropout": 0.1}):
        model = create_model("cnn-fast", **args)
        assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    # the unshuffle stem: 2x2 blocks become 4 channels, the first conv runs on 14x14
    model = create_model("cnn-fast", stem="unshuffle", kernels=[3, 3], channels=[16, 32])
    first = model.features[1]
    assert isinstance(model.features[0], torch.nn.PixelUnshuffle) and first.in_channels == 4
    assert model.classifier[1].in_features == 32 * 4 * 4
    with pytest.raises(DigitlabError, match="stem must be"):
        create_model("cnn-fast", stem="patchify")
    with pytest.raises(DigitlabError, match="channels must be 2 positive integers"):
        create_model("cnn-fast", channels=[8])
    with pytest.raises(DigitlabError, match="leave no pixels"):
        create_model("cnn-fast", kernels=[13, 9])
    with pytest.raises(DigitlabError, match="leave no pixels"):
        create_model("cnn-best", kernel=5, channels=[8] * 7)


@pytest.mark.parametrize("name,args", [("lenet5", {"activation": "relu"}),
                                       ("cnn-fast", {"channels": [12, 24], "hidden": 64}),
                                       ("cnn-best", {"kernel": 7, "dropout": 0.1})])
def test_rebuilt_from_the_weights_file_alone(tmp_path, name, args):
    torch.manual_seed(0)
    full = model_args(name, **args)
    model = create_model(name, **full).to(memory_format=torch.channels_last)
    model.train()
    model(torch.rand(16, 1, 28, 28))  # move batch-norm statistics off their defaults
    model.eval()
    save_weights(tmp_path / "w.safetensors", model, {"model": name, "model_args": full})
    again, meta = load_model(tmp_path / "w.safetensors")
    assert meta["model_args"] == full
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))
