"""digitlab's optimizers are torch.optim's, without the lazy import of torch._dynamo."""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from digitlab.engine import optim


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int = 6) -> None:
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.01, total_steps=steps + 1)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(8, 5, generator=gen)).square().mean().backward()
        opt.step()
        sched.step()


@pytest.mark.parametrize(("ours", "theirs", "kwargs"), [
    (optim.Adam, torch.optim.Adam, {"betas": (0.7, 0.9), "fused": True}),
    (optim.AdamW, torch.optim.AdamW, {"weight_decay": 0.05, "fused": True}),
    (optim.SGD, torch.optim.SGD, {"momentum": 0.9, "nesterov": True, "fused": True}),
    (optim.Adam, torch.optim.Adam, {}),
])
@pytest.mark.slow
def test_same_steps_and_state_as_torch(ours, theirs, kwargs):
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
    b = copy.deepcopy(a)
    opt_a, opt_b = ours(a.parameters(), lr=0.01, **kwargs), theirs(b.parameters(), lr=0.01,
                                                                    **kwargs)
    assert isinstance(opt_a, theirs)
    _train(a, opt_a)
    _train(b, opt_b)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    state_a, state_b = opt_a.state_dict(), opt_b.state_dict()
    assert state_a["param_groups"] == state_b["param_groups"]
    for sa, sb in zip(state_a["state"].values(), state_b["state"].values(), strict=True):
        assert sa.keys() == sb.keys()
        assert all(torch.equal(torch.as_tensor(sa[k]), torch.as_tensor(sb[k])) for k in sa)
    # each loads the other's state dict: checkpoints written before and after agree
    opt_a.load_state_dict(state_b)
    opt_b.load_state_dict(state_a)


@pytest.mark.slow
def test_training_does_not_import_the_compiler():
    # torch._dynamo costs ~150 MB resident and seconds of start-up; an eager run needs none
    # of it. A fresh process, because this one may have imported it already.
    code = textwrap.dedent("""
        import sys, torch
        from digitlab.config import resolve
        from digitlab.engine.optim import build_optimizer, build_scheduler
        model = torch.nn.Linear(4, 2)
        for name in ("adam", "adamw", "sgd"):
            cfg = resolve(preset="fast", flags={"optimizer": name, "device": "cpu"})
            opt = build_optimizer(list(model.parameters()), cfg)
            sched = build_scheduler(opt, cfg, 3)
            model(torch.ones(1, 4)).sum().backward()
            opt.step(); sched.step(); opt.zero_grad()
            opt.load_state_dict(opt.state_dict())
        print("torch._dynamo" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"
