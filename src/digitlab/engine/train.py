"""fit(): the whole training loop, readable top to bottom.

Around the loop: the model (maybe in channels_last, wrapped for data parallelism, compiled,
autocast), an optimizer and schedule stepped per batch, whole-batch augmentation, a weight
EMA, a checkpoint after every epoch (and every N batches), and resume from one such that the
run ends exactly as if it had never stopped.
"""

from __future__ import annotations

import functools
import os
import random
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

import digitlab
from digitlab.config import TrainConfig, differences, from_dict, resolve
from digitlab.console import Console
from digitlab.data import sources
from digitlab.data.augment import Augment, background_value, step_seed
from digitlab.data.handwriting import HandwritingAugment
from digitlab.data.loader import (
    DeviceData,
    Split,
    Uint8Images,
    batches,
    load_split,
    normalise,
    num_batches,
)
from digitlab.data.outliers import OutlierMix
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
from digitlab.engine.ema import EMA
from digitlab.engine.evaluate import EvalResult, evaluate
from digitlab.engine.optim import build_optimizer, build_scheduler
from digitlab.engine.precision import Precision
from digitlab.engine.steps import make_step
from digitlab.errors import DigitlabError, RunDirError
from digitlab.models.registry import count_parameters, create_model, model_args

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


class Trainer:
    """What one optimisation step needs, built from the config. `model` is the plain module
    (what is saved); `forward` is what the step calls: model, maybe wrapped in
    DistributedDataParallel, torch.compile and autocast."""

    def __init__(self, cfg: TrainConfig, device: torch.device, info: Dist = Dist()) -> None:
        self.cfg, self.device, self.info = cfg, device, info
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.args = model_args(cfg.model, **cfg.model_args)
        self.model = create_model(cfg.model, **self.args).to(device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.precision = Precision(cfg.amp, device)
        forward: nn.Module = distributed.wrap(self.model, info, device)
        if cfg.compile:
            # Only the wrapper is compiled; self.model stays the module whose state is saved.
            forward = cast(nn.Module, torch.compile(forward, backend=os.environ.get(
                "DIGITLAB_COMPILE_BACKEND", "inductor")))
        self.forward = self.precision.wrap(forward)
        self.step = make_step(self.forward, cfg.label_smoothing, outliers=cfg.outliers > 0,
                              scale_loss=(self.precision.scale_loss
                                          if self.precision.scaler is not None else None))
        self.optimizer = build_optimizer(self.step.parameters(), cfg)
        self.per_epoch = 0
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self.ema = EMA(self.model, cfg.ema) if cfg.ema else None
        spec = cfg.augment_spec()
        self.augment: Augment | HandwritingAugment | None = (
            Augment(spec, background=background_value(cfg.normalize)) if spec.active else None)
        if cfg.handwriting_augment:
            self.augment = HandwritingAugment(self.augment, normalize=cfg.normalize)
        self.augment_rng = torch.Generator(device=device)
        self.outliers: OutlierMix | None = None  # mix_outliers, once the data is there
        self.permutation_rng = torch.Generator().manual_seed(cfg.seed)
        # Position: completed epochs, batches done in the current one, optimizer steps.
        self.epochs_done = 0
        self.batch = 0
        self.steps = 0
        self.order: torch.Tensor | None = None
        self.loss_sum = torch.zeros((), device=device)
        self.metrics: list[dict[str, Any]] = []

    def samples(self, data: DeviceData, count: int = 16) -> torch.Tensor:
        """A few training images as augmentation shows them to the model."""
        x = data.x[:count]
        if self.augment is None:
            return x
        return self.augment(x, torch.Generator(device=self.device).manual_seed(self.cfg.seed))

    def mix_outliers(self, train: DeviceData) -> None:
        """Make the fused-pair pool (config `outliers`) from the training images."""
        if self.cfg.outliers and self.outliers is None:
            if not isinstance(train.x, Uint8Images):
                raise DigitlabError("outliers need the training images kept as uint8")
            self.outliers = OutlierMix(train.x.images, self.cfg.outliers, self.cfg.seed,
                                       lambda raw: normalise(raw, self.cfg.normalize))

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def plan(self, train_size: int) -> None:
        """Batches per epoch and the schedule over all of them."""
        self.per_epoch = steps_per_epoch(train_size, self.cfg.batch_size, self.info)
        self.scheduler = build_scheduler(self.optimizer, self.cfg, self.per_epoch)

    def start_epoch(self, train_size: int) -> None:
        if self.batch == 0:
            self.order = (torch.randperm(train_size, generator=self.permutation_rng)
                          .to(self.device) if self.cfg.shuffle else None)
            self.loss_sum.zero_()

    def train_batch(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.augment is not None or self.outliers is not None:
            self.augment_rng.manual_seed(step_seed(self.cfg.seed, self.info.rank, self.steps))
        if self.outliers is not None:  # before augmentation: they are bent like the rest
            x, y = self.outliers(x, y, self.augment_rng)
        if self.augment is not None:
            x = self.augment(x, self.augment_rng)
        loss = self.step(x, y)
        self.precision.step(self.optimizer)
        if self.scheduler is not None:
            self.scheduler.step()
        if self.ema is not None:
            self.ema.update()
        self.steps += 1
        self.batch += 1
        self.loss_sum += loss
        return loss

    def eval_batch_size(self, loss_average: str = "sample") -> int:
        """cfg.eval_batch_size, but a CPU evaluates at most a training batch at a time: a
        larger batch gains little speed there, and the convolutions' buffers grow with it.
        Not when the loss is a mean of per-batch means, which depends on the batch."""
        if self.device.type == "cpu" and loss_average == "sample":
            return min(self.cfg.eval_batch_size, self.cfg.batch_size)
        return self.cfg.eval_batch_size

    def evaluate(self, data: DeviceData, loss_average: str = "sample") -> EvalResult:
        """The whole split's result; under data parallelism each rank scores its shard."""
        if self.info.enabled:
            shard = DeviceData(data.x[self.info.rank :: self.info.world],
                               data.y[self.info.rank :: self.info.world])
            with self.precision.autocast():
                result = evaluate(self.eval_model, shard, batch_size=self.eval_batch_size())
            return distributed.reduce_eval(result, shard.y, self.info)
        with self.precision.autocast():
            return evaluate(self.eval_model, data, batch_size=self.eval_batch_size(loss_average),
                            loss_average=loss_average)

    # --- checkpoints ----------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "config": self.cfg.to_dict(),
            "model_args": self.args,
            "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "precision": self.precision.state_dict(),
            "epochs_done": self.epochs_done,
            "batch": self.batch,
            "steps": self.steps,
            "order": self.order.cpu() if self.order is not None and self.batch else None,
            "loss_sum": self.loss_sum.cpu(),
            "metrics": self.metrics,
            "rng": checkpoint.capture_rng({"permutation": self.permutation_rng}),
            "world": self.info.world,
            "digitlab_version": digitlab.__version__,
            "torch_version": str(torch.__version__),
        }

    def restore(self, state: dict[str, Any], *, exact: bool) -> None:
        """Continue from a checkpoint. exact: same settings, so everything is restored as
        it was; otherwise (resume --force) the weights, EMA and optimizer moments carry over
        and the new schedule is wound forward to the step reached."""
        try:
            self.model.load_state_dict(state["model"])
            if self.ema is not None and state["ema"] is not None:
                self.ema.load_state_dict(state["ema"])
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise RunDirError(f"the checkpoint's weights do not fit the model ({first})") from None
        if self.ema is not None and state["ema"] is None:
            self.ema.module.load_state_dict(self.model.state_dict())
        saved_cfg = state["config"]
        if exact:
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scheduler is not None and state["scheduler"] is not None:
                self.scheduler.load_state_dict(state["scheduler"])
        else:
            if saved_cfg["optimizer"] == self.cfg.optimizer:
                current = self.optimizer.state_dict()
                current["state"] = state["optimizer"]["state"]
                self.optimizer.load_state_dict(current)
            if self.scheduler is not None:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    for _ in range(state["steps"]):
                        self.scheduler.step()
        self.precision.load_state_dict(state["precision"])
        self.epochs_done = int(state["epochs_done"])
        self.steps = int(state["steps"])
        self.batch = int(state["batch"])
        if self.batch and saved_cfg["batch_size"] != self.cfg.batch_size:
            self.batch = self.batch * saved_cfg["batch_size"] // self.cfg.batch_size
        if self.batch >= self.per_epoch:
            self.batch = 0  # --force with a larger batch: the epoch is over
        order = state["order"]
        self.order = order.to(self.device) if order is not None and self.batch else None
        self.loss_sum = state["loss_sum"].to(self.device)
        self.metrics = list(state["metrics"])
        checkpoint.restore_rng(state["rng"], {"permutation": self.permutation_rng})


def steps_per_epoch(n: int, batch_size: int, info: Dist) -> int:
    if not info.enabled:
        return num_batches(n, batch_size)
    if batch_size % info.world:
        raise DigitlabError(f"--batch-size {batch_size} must be a multiple of the "
                            f"{info.world} processes")
    # A last global batch with fewer images than processes would leave a rank without any.
    return n // batch_size + (1 if n % batch_size >= info.world else 0)


def epoch_batches(trainer: Trainer, data: DeviceData) -> Iterator[tuple[torch.Tensor,
                                                                          torch.Tensor]]:
    """This process's batches for the rest of the current epoch."""
    cfg, info = trainer.cfg, trainer.info
    if not info.enabled:
        yield from batches(data, cfg.batch_size, order=trainer.order, start=trainer.batch)
        return
    order = trainer.order if trainer.order is not None else torch.arange(
        len(data), device=data.y.device)
    for i in range(trainer.batch, trainer.per_epoch):
        idx = distributed.shard(order[i * cfg.batch_size : (i + 1) * cfg.batch_size], info)
        yield data.x[idx], data.y[idx]


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
