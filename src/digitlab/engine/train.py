"""fit(): the whole training loop, readable top to bottom."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import digitlab
from digitlab.config import TrainConfig
from digitlab.console import Console
from digitlab.data import sources
from digitlab.data.loader import DeviceData, batches, load_split, num_batches
from digitlab.device import resolve_device
from digitlab.engine import rundir
from digitlab.engine.evaluate import EvalResult, evaluate
from digitlab.engine.optim import build_optimizer, build_scheduler
from digitlab.engine.steps import make_step
from digitlab.errors import DigitlabError
from digitlab.models.registry import count_parameters, create_model, model_args


@dataclass
class FitResult:
    run_dir: Path
    final: EvalResult
    metrics: list[dict[str, Any]]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_data(cfg: TrainConfig, root: Path | None, device: torch.device, console: Console
              ) -> tuple[DeviceData, DeviceData, DeviceData | None]:
    """(train, test, validation): validation is the last cfg.val_split training images."""
    root = root if root is not None else sources.default_root()
    sources.fetch(cfg.dataset, root=root, report=console.note)
    train = DeviceData.from_split(load_split(cfg.dataset, root, "train"), device, cfg.normalize,
                                  cfg.limit_train)
    test = DeviceData.from_split(load_split(cfg.dataset, root, "test"), device, cfg.normalize)
    val = None
    if cfg.val_split:
        if cfg.val_split >= len(train):
            raise DigitlabError(f"val_split {cfg.val_split} leaves no training images")
        keep = len(train) - cfg.val_split
        val = DeviceData(train.x[keep:], train.y[keep:])
        train = DeviceData(train.x[:keep], train.y[:keep])
    return train, test, val


def weights_meta(cfg: TrainConfig, args: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """What a weights file carries besides tensors: enough to rebuild and feed the model."""
    return {
        "model": cfg.model,
        "model_args": args,
        "normalize": cfg.normalize,
        "dataset": cfg.dataset,
        "classes": list(sources.get_spec(cfg.dataset).classes),
        "digitlab_version": digitlab.__version__,
        **extra,
    }


def fit(
    cfg: TrainConfig,
    *,
    out: Path | None = None,
    force: bool = False,
    root: Path | None = None,
    console: Console | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> FitResult:
    """Train as cfg says and write the run directory. on_epoch(row) is called after each
    epoch's metrics row is written (a hyperparameter search prunes from it by raising)."""
    console = console or Console()
    cfg.validate()
    device = resolve_device(cfg.device)
    args = model_args(cfg.model, **cfg.model_args)  # refuse bad model options before any work
    seed_everything(cfg.seed)
    train, test, val = load_data(cfg, root, device, console)
    if cfg.tutorial_log:
        console.line(str(len(train)))
        console.line(str(len(test)))
        x0, y0 = next(batches(test, cfg.batch_size))
        console.line(f"shape of x[N,C,H,W]:{x0.shape}")
        console.line(f"shape of y:{y0.shape}{y0.dtype}")
    console.line(f"Using {device.type} device")

    model = create_model(cfg.model, **args).to(device)
    console.line(str(model))
    step = make_step(model, cfg.label_smoothing)
    optimizer = build_optimizer(step.parameters(), cfg)
    per_epoch = num_batches(len(train), cfg.batch_size)
    scheduler = build_scheduler(optimizer, cfg, per_epoch)

    run = rundir.new_run_dir(out, force=force)
    rundir.write_json(run / rundir.CONFIG, {
        **cfg.to_dict(),
        "model_args": args,
        "parameters": count_parameters(model),
        "device_used": device.type,
        "digitlab_version": digitlab.__version__,
        "torch_version": torch.__version__,
        "git_commit": rundir.git_commit(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })
    (run / rundir.METRICS).write_text("")

    permutation_rng = torch.Generator().manual_seed(cfg.seed)
    metrics: list[dict[str, Any]] = []
    result: EvalResult | None = None
    for epoch in range(1, cfg.epochs + 1):
        if cfg.tutorial_log:
            console.line(f"Epoch {epoch}\n--------------------")
        order = (torch.randperm(len(train), generator=permutation_rng).to(device)
                 if cfg.shuffle else None)
        model.train()
        loss_sum = torch.zeros((), device=device)
        started = time.perf_counter()
        with console.progress(per_epoch, f"epoch {epoch}/{cfg.epochs}") as advance:
            for number, (x, y) in enumerate(batches(train, cfg.batch_size, order=order), 1):
                loss = step(x, y)
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                loss_sum += loss
                if cfg.log_every and number % cfg.log_every == 0:
                    console.line(f"loss:{loss.item():>7f} [number: {number}]")
                    advance(cfg.log_every)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started

        result = evaluate(model, test, batch_size=cfg.eval_batch_size,
                          loss_average=cfg.loss_average)
        row = {
            "epoch": epoch,
            "train_loss": loss_sum.item() / per_epoch,
            "test_loss": result.loss,
            "test_accuracy": result.accuracy,
            "seconds": seconds,
            "images_per_second": len(train) / seconds,
            "lr": optimizer.param_groups[0]["lr"],
        }
        if val is not None:
            checked = evaluate(model, val, batch_size=cfg.eval_batch_size)
            row["val_loss"], row["val_accuracy"] = checked.loss, checked.accuracy
        metrics.append(row)
        rundir.append_metrics(run, row)
        rundir.save_weights(run / rundir.WEIGHTS, model, weights_meta(
            cfg, args, epoch=epoch, test_accuracy=result.accuracy, test_loss=result.loss))
        if not cfg.tutorial_log:
            console.line(
                f"epoch {epoch:>3}/{cfg.epochs}  train loss {row['train_loss']:.4f}  "
                f"test loss {result.loss:.4f}  test accuracy {100 * result.accuracy:.2f}%  "
                f"{seconds:.2f}s  {row['images_per_second']:,.0f} img/s"
            )
        if on_epoch is not None:
            on_epoch(row)

    assert result is not None
    if cfg.tutorial_log:
        console.line("Done!!")
    console.result(result.summary())
    console.note(f"run saved to {run}")
    return FitResult(run, result, metrics)
