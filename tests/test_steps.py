"""The hand-written MLP step computes exactly what autograd computes."""

from __future__ import annotations

import pytest
import torch

from digitlab.engine.steps import AutogradStep, MLPStep, make_step
from digitlab.models.registry import create_model


@pytest.mark.parametrize("activation", ["sigmoid", "relu", "tanh"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_manual_gradients_match_autograd(activation, smoothing):
    torch.manual_seed(0)
    reference = create_model("mlp", hidden=[64, 32, 16], activation=activation)
    manual = create_model("mlp", hidden=[64, 32, 16], activation=activation)
    manual.load_state_dict(reference.state_dict())
    x, y = torch.rand(37, 1, 28, 28), torch.randint(0, 10, (37,))

    auto_loss = AutogradStep(reference, smoothing)(x, y)
    step = MLPStep(manual, smoothing)
    manual_loss = step(x, y)

    torch.testing.assert_close(manual_loss, auto_loss, rtol=1e-5, atol=1e-6)
    for (name, p_ref), p_man in zip(reference.named_parameters(), manual.parameters(),
                                    strict=True):
        torch.testing.assert_close(p_man.grad, p_ref.grad, rtol=1e-4, atol=1e-6,
                                   msg=f"gradient of {name}")


def test_flat_parameters_stay_the_models_parameters():
    model = create_model("mlp")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    step = MLPStep(model)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k])
    # an optimizer step on the flat buffer moves the model's own weights
    opt = torch.optim.SGD(step.parameters(), lr=0.1)
    step(torch.rand(8, 784), torch.randint(0, 10, (8,)))
    opt.step()
    assert not torch.equal(model.hidden1.weight, before["hidden1.weight"])
    assert model.hidden1.weight.data_ptr() == step.flat.data_ptr()


def test_make_step_falls_back_to_autograd_where_needed():
    assert isinstance(make_step(create_model("mlp")), MLPStep)
    assert isinstance(make_step(create_model("mlp", activation="gelu")), AutogradStep)
    assert isinstance(make_step(create_model("mlp", dropout=0.2)), AutogradStep)
