"""Trainer: what one optimisation step needs, built from the config (the model, maybe
wrapped for data parallelism, compiled and autocast; the optimizer and schedule; the
augmentation; the weight EMA), with its position in the run and its checkpoint state; and
the batches of an epoch, sharded among data-parallel processes."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from typing import Any, cast

import torch
from torch import nn

import digitlab
from digitlab.config import TrainConfig
from digitlab.data.augment import Augment, background_value, step_seed
from digitlab.data.handwriting import HandwritingAugment
from digitlab.data.loader import DeviceData, Uint8Images, batches, normalise, num_batches
from digitlab.data.outliers import OutlierMix
from digitlab.engine import checkpoint, distributed
from digitlab.engine.distributed import Dist
from digitlab.engine.ema import EMA
from digitlab.engine.evaluate import EvalResult, evaluate
from digitlab.engine.optim import build_optimizer, build_scheduler
from digitlab.engine.precision import Precision
from digitlab.engine.steps import make_step
from digitlab.errors import DigitlabError, RunDirError, first_line
from digitlab.models.registry import create_model, model_args

__all__ = ["Trainer", "epoch_batches", "steps_per_epoch"]


class Trainer:
    """What one optimisation step needs, built from the config. `model` is the plain module
    (what is saved); `forward` is what the step calls: model, maybe wrapped in
    DistributedDataParallel, torch.compile and autocast."""

    def __init__(self, cfg: TrainConfig, device: torch.device, info: Dist | None = None
                 ) -> None:
        info = info if info is not None else Dist()
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
            raise RunDirError(f"the checkpoint's weights do not fit the model "
                              f"({first_line(exc)})") from None
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
