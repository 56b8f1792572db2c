"""Optimizers and learning-rate schedules, all stepped once per batch."""

from __future__ import annotations

import inspect
import math
from typing import Any, TypeVar, cast

import torch
from torch import nn
from torch.optim import Optimizer

from digitlab.config import TrainConfig

OptimizerT = TypeVar("OptimizerT", bound=Optimizer)


def _eager(cls: type[OptimizerT]) -> type[OptimizerT]:
    """cls without the wrappers that import torch._dynamo.

    torch.optim's optimizers import the compiler (torch._dynamo: a sixth of a short training
    run's memory, and seconds of start-up) the first time one is built, stepped or saved,
    only to mark those methods as not to be traced by it. Nothing here traces an optimizer
    (--compile compiles the model alone), so the subclass calls the functions under the
    wrappers: the same code, the same state dicts and the same numbers, without the
    compiler in memory (docs/decisions/0001)."""
    step = inspect.unwrap(cls.step)

    def eager_step(self: Optimizer, closure: Any = None) -> Any:
        with torch.no_grad():  # what the wrapper does for a non-differentiable optimizer
            return step(self, closure)

    methods = {name: inspect.unwrap(getattr(Optimizer, name))
               for name in ("add_param_group", "state_dict", "load_state_dict", "zero_grad")}
    return cast(type[OptimizerT], type(cls.__name__, (cls,), {
        **methods, "step": eager_step, "__module__": __name__, "__qualname__": cls.__name__,
        "__doc__": _eager.__doc__}))


SGD = _eager(torch.optim.SGD)
Adam = _eager(torch.optim.Adam)
AdamW = _eager(torch.optim.AdamW)


def build_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    # fused kernels: one pass over each tensor instead of a handful of foreach launches.
    fused = params[0].device.type in ("cpu", "cuda")
    if cfg.optimizer == "sgd":
        return SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                   weight_decay=cfg.weight_decay, nesterov=cfg.momentum > 0, fused=fused)
    cls = AdamW if cfg.optimizer == "adamw" else Adam
    return cls(params, lr=cfg.lr, betas=(cfg.betas[0], cfg.betas[1]), weight_decay=cfg.weight_decay,
               fused=fused)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
                    ) -> torch.optim.lr_scheduler.LRScheduler | None:
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "none":
        return None
    if cfg.schedule == "onecycle":
        # OneCycleLR divides by its warm-up length in steps, which must not round to zero
        # (a run of a few batches, e.g. --limit-train in a smoke test).
        pct = min(0.9, max(cfg.warmup or 0.25, 1.5 / (total + 1)))
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=cfg.lr, total_steps=total + 1, pct_start=pct,
            anneal_strategy="linear", cycle_momentum=False,
        )
    warm = int(cfg.warmup * total)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if cfg.schedule == "cosine":
            progress = (step - warm) / max(1, total - warm)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return cfg.gamma ** (step // (cfg.step_size * steps_per_epoch))  # "step"

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
