"""Every registered model: output shape, no NaN, every parameter gets a gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from digitlab.errors import DigitlabError
from digitlab.models.registry import count_parameters, create_model, list_models, model_args


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_trains(name):
    torch.manual_seed(0)
    model = create_model(name)
    x = torch.rand(4, 1, 28, 28)
    logits = model(x)
    assert logits.shape == (4, 10)
    assert torch.isfinite(logits).all()
    F.cross_entropy(logits, torch.arange(4)).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"


def test_mlp_defaults_are_the_tutorial_network():
    model = create_model("mlp")
    shapes = [tuple(p.shape) for p in model.parameters()]
    assert shapes == [(128, 784), (128,), (256, 128), (256,), (128, 256), (128,),
                      (64, 128), (64,), (10, 64), (10,)]
    assert count_parameters(model) == 175_306
    text = str(model)
    assert text.startswith("MLP(\n  (flatten): Flatten(start_dim=1, end_dim=-1)\n  (hidden1)")
    assert "(out): Linear(in_features=64, out_features=10, bias=True)" in text
    x = torch.rand(3, 1, 28, 28)
    manual = x.flatten(1)
    for layer in model.linears[:-1]:
        manual = torch.sigmoid(layer(manual))
    torch.testing.assert_close(model(x), model.out(manual))


@pytest.mark.parametrize("activation", ["sigmoid", "relu", "tanh", "gelu", "silu"])
def test_mlp_activations_and_hidden_sizes(activation):
    model = create_model("mlp", hidden=[32, 16], activation=activation, dropout=0.1)
    assert [layer.out_features for layer in model.linears] == [32, 16, 10]
    assert model(torch.rand(2, 784)).shape == (2, 10)


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(DigitlabError, match=r"unknown model 'resnet'; known models: .*mlp"):
        create_model("resnet")


def test_bad_model_options_are_clear():
    with pytest.raises(DigitlabError, match="has no option depth"):
        create_model("mlp", depth=3)
    with pytest.raises(DigitlabError, match="unknown activation 'swish'"):
        create_model("mlp", activation="swish")


def test_model_args_fills_defaults_so_a_run_can_rebuild_the_model():
    args = model_args("mlp", activation="relu")
    assert args == {"hidden": [128, 256, 128, 64], "activation": "relu", "dropout": 0.0,
                    "in_features": 784, "num_classes": 10}
