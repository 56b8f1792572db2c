"""Weight EMA: the arithmetic, buffers, state round trip."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from digitlab.engine.ema import EMA


def test_average_follows_the_formula_with_its_warm_up():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    ema = EMA(model, decay=0.9)
    expected = [p.detach().clone() for p in model.parameters()]
    for n in range(30):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model(torch.randn(8, 4))  # moves the batch-norm buffers
        d = min(0.9, (1 + n) / (10 + n))
        assert ema.current_decay() == pytest.approx(d)
        ema.update()
        expected = [d * e + (1 - d) * p.detach() for e, p in zip(expected, model.parameters(),
                                                                   strict=True)]
    for e, s in zip(expected, ema.module.parameters(), strict=True):
        torch.testing.assert_close(s, e)
    assert torch.equal(ema.module[1].running_mean, model[1].running_mean)
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_state_round_trip_continues_identically():
    torch.manual_seed(1)
    model = nn.Linear(5, 2)
    a = EMA(model, 0.99)
    for _ in range(7):
        with torch.no_grad():
            model.weight.add_(1.0)
        a.update()
    b = EMA(nn.Linear(5, 2), 0.5)
    b.load_state_dict(a.state_dict())
    b._pairs = b._match(model)
    for e in (a, b):
        e.update()
    assert b.decay == 0.99 and b.updates == a.updates == 8
    assert torch.equal(a.module.weight, b.module.weight)


def test_decay_must_be_a_fraction():
    with pytest.raises(ValueError, match="decay"):
        EMA(nn.Linear(1, 1), 1.0)
