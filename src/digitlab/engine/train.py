"""fit(): the whole training loop, readable top to bottom.

Around the loop: the model (maybe in channels_last, wrapped for data parallelism, compiled,
autocast), an optimizer and schedule stepped per batch, whole-batch augmentation, a weight
EMA, a checkpoint after every epoch (and every N batches), and resume from one such that the
run ends exactly as if it had never stopped.
"""

from __future__ import annotations

import functools
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import digitlab
from digitlab.config import TrainConfig, differences, from_dict, resolve
from digitlab.console import Console
from digitlab.data import sources
from digitlab.data.loader import (
    DeviceData,
    Split,
    batches,
    load_split,
)
from digitlab.device import resolve_device
from digitlab.engine import checkpoint, distributed, rundir
from digitlab.engine.callbacks import (
    Callback,
    Checkpointer,
    ConsoleLog,
    EpochHook,
    TensorBoardLog,
)
from digitlab.engine.distributed import Dist
from digitlab.engine.evaluate import EvalResult
from digitlab.engine.trainer import Trainer, epoch_batches
from digitlab.errors import DigitlabError
from digitlab.models.registry import count_parameters, create_model

Data = tuple[DeviceData, DeviceData, DeviceData | None]


@dataclass
class FitResult:
    run_dir: Path
    final: EvalResult
    metrics: list[dict[str, Any]]


class Interrupted(DigitlabError):
    """Ctrl-C (or SIGTERM) stopped training after a checkpoint was written."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_data(cfg: TrainConfig, root: Path | None, device: torch.device, console: Console
              ) -> Data:
    """(train, test, validation): validation is the last cfg.val_split training images.
    Images stay uint8 on the device and are normalised batch by batch (a CPU run's memory)."""
    root = root if root is not None else sources.default_root()
    sources.fetch(cfg.dataset, root=root, report=console.note)
    split = load_split(cfg.dataset, root, "train")
    if cfg.limit_train:
        split = Split(split.images[: cfg.limit_train], split.labels[: cfg.limit_train])
    val = None
    if cfg.val_split:
        if cfg.val_split >= len(split.labels):
            raise DigitlabError(f"val_split {cfg.val_split} leaves no training images")
        keep = len(split.labels) - cfg.val_split
        val = DeviceData.from_split(Split(split.images[keep:], split.labels[keep:]), device,
                                    cfg.normalize, lazy=True)
        split = Split(split.images[:keep], split.labels[:keep])
    train = DeviceData.from_split(split, device, cfg.normalize, lazy=True)
    test = DeviceData.from_split(load_split(cfg.dataset, root, "test"), device, cfg.normalize,
                                 lazy=True)
    return train, test, val


class _Silent(Console):
    """The console of every data-parallel process but the first."""

    def __init__(self) -> None:
        super().__init__(quiet=True)

    def result(self, text: str) -> None:
        pass


@contextmanager
def _stop_requests() -> Iterator[dict[str, bool]]:
    """The first Ctrl-C (or SIGTERM) asks the loop to checkpoint and stop at the next batch;
    a second Ctrl-C stops at once."""
    flag = {"stop": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def ask(signum: int, frame: Any) -> None:
        if flag["stop"] and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag["stop"] = True

    previous = {s: signal.signal(s, ask) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def fit(
    cfg: TrainConfig,
    *,
    out: Path | None = None,
    force: bool = False,
    root: Path | None = None,
    console: Console | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    tensorboard: Path | None = None,
    preloaded: Data | None = None,
    resume_from: dict[str, Any] | None = None,
) -> FitResult:
    """Train as cfg says and write the run directory. on_epoch(row) is called after each
    epoch's metrics row is written (a hyperparameter search prunes from it by raising).
    preloaded: (train, test, val) already on the device (benchmarks). resume_from: a
    checkpoint (see resume()); out is then that run's directory."""
    console = console or Console()
    info = distributed.from_env()
    device = distributed.setup(info, resolve_device(cfg.device))
    try:
        return _fit(cfg, out=out, force=force, root=root,
                    console=console if info.main else _Silent(), on_epoch=on_epoch,
                    tensorboard=tensorboard if info.main else None, preloaded=preloaded,
                    resume_from=resume_from, device=device, info=info)
    finally:
        distributed.teardown(info)


def _fit(cfg: TrainConfig, *, out: Path | None, force: bool, root: Path | None,
         console: Console, on_epoch: Callable[[dict[str, Any]], None] | None,
         tensorboard: Path | None, preloaded: Data | None, resume_from: dict[str, Any] | None,
         device: torch.device, info: Dist) -> FitResult:
    # Refuse bad model options before any work (fetching data, say): built on the meta
    # device, the model allocates nothing.
    with torch.device("meta"):
        create_model(cfg.model, **cfg.model_args)
    seed_everything(cfg.seed)
    train, test, val = preloaded or load_data(cfg, root, device, console)
    if cfg.tutorial_log:
        _tutorial_preamble(console, train, test, cfg.batch_size)
    console.line(f"Using {device.type} device" + (f" x {info.world} processes"
                                                    if info.enabled else ""))
    built = time.perf_counter()
    trainer = Trainer(cfg, device, info)
    console.line(str(trainer.model))
    trainer.mix_outliers(train)
    trainer.plan(len(train))
    if resume_from is not None:
        exact = not differences(from_dict(resume_from["config"]), cfg)
        trainer.restore(resume_from, exact=exact)
        if trainer.epochs_done >= cfg.epochs:
            raise DigitlabError(f"{out} already finished its {trainer.epochs_done} epochs; "
                                "to train on, resume with a larger --epochs and --force")
    run = (_prepare_run(cfg, trainer, out, force, device, info, resumed=resume_from)
           if info.main else None)
    saver = Checkpointer(run, cfg)
    callbacks: list[Callback] = [ConsoleLog(cfg, console), saver]
    if tensorboard is not None:
        callbacks.append(TensorBoardLog(tensorboard, cfg, trainer.samples(train)))
    if on_epoch is not None:
        callbacks.append(EpochHook(on_epoch))

    result: EvalResult | None = None
    try:
        with _stop_requests() as stop:
            for epoch in range(trainer.epochs_done + 1, cfg.epochs + 1):
                for callback in callbacks:
                    callback.epoch_started(epoch)
                stop_now = functools.partial(_stop_now, stop, info, trainer, saver, run, epoch)
                first, seconds = _train_epoch(trainer, train, epoch, callbacks, console, stop_now)
                result = trainer.evaluate(test, cfg.loss_average)
                row = _epoch_row(trainer, epoch, len(train), first, seconds, result, val,
                                 time.perf_counter() - built)
                trainer.epochs_done, trainer.batch = epoch, 0
                trainer.metrics.append(row)
                for callback in callbacks:
                    callback.epoch_done(trainer, row, result)
                if _stopping(stop, info, 0) and epoch < cfg.epochs:
                    raise Interrupted(_interrupted_message(run, epoch + 1, 0))
    finally:
        for callback in callbacks:
            callback.close()

    assert result is not None
    if cfg.tutorial_log:
        console.line("Done!!")
    console.result(result.summary())
    if run is not None:
        console.note(f"run saved to {run}")
    return FitResult(run if run is not None else Path(), result, trainer.metrics)


def _tutorial_preamble(console: Console, train: DeviceData, test: DeviceData,
                       batch_size: int) -> None:
    """The lines the tutorial prints before training: the split sizes and a batch's shapes."""
    console.line(str(len(train)))
    console.line(str(len(test)))
    x0, y0 = next(batches(test, batch_size))
    console.line(f"shape of x[N,C,H,W]:{x0.shape}")
    console.line(f"shape of y:{y0.shape}{y0.dtype}")


def _train_epoch(trainer: Trainer, train: DeviceData, epoch: int, callbacks: list[Callback],
                 console: Console, stop_now: Callable[[], None]) -> tuple[int, float]:
    """The rest of the epoch's batches (all of them unless resumed mid-epoch). Returns the
    batch it started at and the seconds it took."""
    cfg = trainer.cfg
    trainer.start_epoch(len(train))
    trainer.model.train()
    trainer.forward.train()
    started, first = time.perf_counter(), trainer.batch
    with console.progress(trainer.per_epoch, f"epoch {epoch}/{cfg.epochs}") as advance:
        for x, y in epoch_batches(trainer, train):
            loss = trainer.train_batch(x, y)
            for callback in callbacks:
                callback.batch_done(trainer, loss)
            if cfg.log_every and trainer.batch % cfg.log_every == 0:
                advance(cfg.log_every)
            if trainer.batch < trainer.per_epoch:
                stop_now()
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    return first, time.perf_counter() - started


def _stop_now(stop: dict[str, bool], info: Dist, trainer: Trainer, saver: Checkpointer,
              run: Path | None, epoch: int) -> None:
    """Mid-epoch: on a stop request, checkpoint here and end with Interrupted."""
    if _stopping(stop, info, trainer.batch):
        saver.save(trainer)
        raise Interrupted(_interrupted_message(run, epoch, trainer.batch))


def _epoch_row(trainer: Trainer, epoch: int, images: int, first: int, seconds: float,
               result: EvalResult, val: DeviceData | None, elapsed: float) -> dict[str, Any]:
    """The epoch's metrics row (metrics.jsonl)."""
    info = trainer.info
    train_loss = distributed.all_sum(trainer.loss_sum, info).item() / (
        trainer.per_epoch * info.world)
    row = {
        "epoch": epoch,
        "train_loss": train_loss,
        "test_loss": result.loss,
        "test_accuracy": result.accuracy,
        "seconds": seconds,
        # a resumed epoch only timed the batches after the checkpoint
        "images_per_second": images * (trainer.per_epoch - first) / trainer.per_epoch / seconds,
        "elapsed": elapsed,
        "lr": trainer.optimizer.param_groups[0]["lr"],
    }
    if val is not None:
        checked = trainer.evaluate(val)
        row["val_loss"], row["val_accuracy"] = checked.loss, checked.accuracy
    return row


def _stopping(stop: dict[str, bool], info: Dist, number: int) -> bool:
    """Whether to stop now. Data-parallel processes agree every 25 batches (a collective
    per batch would stall the GPU), so a stop request waits for the next such batch."""
    if not info.enabled:
        return stop["stop"]
    if number % 25:
        return False
    flag = torch.tensor([1.0 if stop["stop"] else 0.0])
    if torch.distributed.get_backend() == "nccl":
        flag = flag.cuda()
    return bool(distributed.all_sum(flag, info).item())


def _interrupted_message(run: Path | None, epoch: int, batch: int) -> str:
    where = f"epoch {epoch}, batch {batch}" if batch else f"the start of epoch {epoch}"
    return (f"interrupted: checkpoint saved at {where}; continue with: "
            f"digitlab train --resume {run}")


def _prepare_run(cfg: TrainConfig, trainer: Trainer, out: Path | None, force: bool,
                 device: torch.device, info: Dist, resumed: dict[str, Any] | None) -> Path:
    if resumed is not None:
        assert out is not None
        saved = rundir.read_json(out / rundir.CONFIG)
        saved.update({k: v for k, v in cfg.to_dict().items()})
        saved.setdefault("resumed", []).append(time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        rundir.write_json(out / rundir.CONFIG, saved)
        # The checkpoint's rows are the truth: a row written after it is recomputed.
        (out / rundir.METRICS).write_text("")
        for row in trainer.metrics:
            rundir.append_metrics(out, row)
        return out
    run = rundir.new_run_dir(out, force=force)
    rundir.write_json(run / rundir.CONFIG, {
        **cfg.to_dict(),
        "model_args": trainer.args,
        "parameters": count_parameters(trainer.model),
        "device_used": device.type,
        "processes": info.world,
        "amp_used": trainer.precision.mode,
        "digitlab_version": digitlab.__version__,
        "torch_version": torch.__version__,
        "git_commit": rundir.git_commit(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })
    (run / rundir.METRICS).write_text("")
    return run


def resume(
    run: Path,
    *,
    preset: str | None = None,
    config_file: Path | None = None,
    flags: dict[str, Any] | None = None,
    force: bool = False,
    root: Path | None = None,
    console: Console | None = None,
    tensorboard: Path | None = None,
) -> FitResult:
    """Continue a run from its last good checkpoint. Settings given here are laid over the
    run's own; if that changes the computation, refuse unless force."""
    console = console or Console()
    # A damaged checkpoint is worth a warning even with --quiet.
    state, _ = checkpoint.load(run, report=lambda text: print(text, file=sys.stderr))
    saved = from_dict(state["config"])
    cfg = resolve(preset=preset, config_file=config_file, flags=flags, base=saved)
    changed = differences(saved, cfg)
    if changed and not force:
        raise DigitlabError(
            f"--resume {run}: these settings differ from the run's: {'; '.join(changed)}. "
            "Leave them out to continue the run as it was, or pass --force to continue with "
            "the new settings"
        )
    return fit(cfg, out=run, root=root, console=console, tensorboard=tensorboard,
               resume_from=state)
