"""What the training loop tells the things around it: the console, TensorBoard, the run
directory's checkpoints and weights, and a hyperparameter search's pruning hook. engine/train.py
calls every callback at the start of an epoch, after each batch and after each epoch."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

import digitlab
from digitlab.config import TrainConfig
from digitlab.console import Console
from digitlab.data import sources
from digitlab.engine import checkpoint, rundir
from digitlab.engine.evaluate import EvalResult
from digitlab.errors import DigitlabError

if TYPE_CHECKING:
    from digitlab.engine.trainer import Trainer


def weights_meta(cfg: TrainConfig, args: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """What a weights file carries besides tensors: enough to rebuild and feed the model."""
    return {
        "model": cfg.model,
        "model_args": args,
        "normalize": cfg.normalize,
        "dataset": cfg.dataset,
        "classes": list(sources.get_spec(cfg.dataset).classes),
        "outliers": cfg.outliers,  # shown fused pairs as non-digits: see vision/number.py
        "digitlab_version": digitlab.__version__,
        **extra,
    }


class Callback:
    """What the training loop tells the things around it (logs, TensorBoard, checkpoints,
    a hyperparameter search). Each method may be left as it is."""

    def epoch_started(self, epoch: int) -> None:
        pass

    def batch_done(self, trainer: Trainer, loss: torch.Tensor) -> None:
        pass

    def epoch_done(self, trainer: Trainer, row: dict[str, Any], result: EvalResult) -> None:
        pass

    def close(self) -> None:
        pass


class ConsoleLog(Callback):
    """A line per epoch, or the tutorial's own lines (its epoch header and "Done!!"); the
    loss line every cfg.log_every batches in either case."""

    def __init__(self, cfg: TrainConfig, console: Console) -> None:
        self.cfg, self.console = cfg, console

    def epoch_started(self, epoch: int) -> None:
        if self.cfg.tutorial_log:
            self.console.line(f"Epoch {epoch}\n--------------------")

    def batch_done(self, trainer: Trainer, loss: torch.Tensor) -> None:
        if self.cfg.log_every and trainer.batch % self.cfg.log_every == 0:
            self.console.line(f"loss:{loss.item():>7f} [number: {trainer.batch}]")

    def epoch_done(self, trainer: Trainer, row: dict[str, Any], result: EvalResult) -> None:
        if not self.cfg.tutorial_log:
            self.console.line(
                f"epoch {row['epoch']:>3}/{self.cfg.epochs}  train loss {row['train_loss']:.4f}"
                f"  test loss {result.loss:.4f}  test accuracy {100 * result.accuracy:.2f}%  "
                f"{row['seconds']:.2f}s  {row['images_per_second']:,.0f} img/s")


class TensorBoardLog(Callback):
    def __init__(self, path: Path, cfg: TrainConfig, samples: torch.Tensor) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise DigitlabError("--tensorboard needs the tensorboard package: "
                                "pip install 'digitlab[tensorboard]'") from None
        self.cfg = cfg
        self.writer = SummaryWriter(log_dir=str(path))
        self.writer.add_images("train/samples", _viewable(samples, cfg.normalize), 0)

    def batch_done(self, trainer: Trainer, loss: torch.Tensor) -> None:
        if self.cfg.log_every and trainer.batch % self.cfg.log_every == 0:
            self.writer.add_scalar("train/batch_loss", loss.item(), trainer.steps)

    def epoch_done(self, trainer: Trainer, row: dict[str, Any], result: EvalResult) -> None:
        epoch, scalars = row["epoch"], {"train/loss": "train_loss", "test/loss": "test_loss",
                                        "test/accuracy": "test_accuracy", "lr": "lr",
                                        "val/loss": "val_loss", "val/accuracy": "val_accuracy"}
        for tag, key in scalars.items():
            if key in row:
                self.writer.add_scalar(tag, row[key], epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class Checkpointer(Callback):
    """The run directory's files: a checkpoint every cfg.checkpoint_every batches (and when
    asked, before a stop); after each epoch its metrics row, the weights and a checkpoint."""

    def __init__(self, run: Path | None, cfg: TrainConfig) -> None:
        self.run, self.cfg = run, cfg

    def save(self, trainer: Trainer) -> None:
        if self.run is not None:
            checkpoint.save(self.run, trainer.state())

    def batch_done(self, trainer: Trainer, loss: torch.Tensor) -> None:
        every = self.cfg.checkpoint_every
        if every and trainer.batch % every == 0 and trainer.batch < trainer.per_epoch:
            self.save(trainer)

    def epoch_done(self, trainer: Trainer, row: dict[str, Any], result: EvalResult) -> None:
        if self.run is None:
            return
        rundir.append_metrics(self.run, row)
        rundir.save_weights(self.run / rundir.WEIGHTS, trainer.eval_model, weights_meta(
            self.cfg, trainer.args, epoch=row["epoch"], test_accuracy=result.accuracy,
            test_loss=result.loss))
        self.save(trainer)


class EpochHook(Callback):
    """on_epoch(row) after each epoch's row is written: a hyperparameter search prunes a
    trial from it by raising."""

    def __init__(self, on_epoch: Callable[[dict[str, Any]], None]) -> None:
        self.on_epoch = on_epoch

    def epoch_done(self, trainer: Trainer, row: dict[str, Any], result: EvalResult) -> None:
        self.on_epoch(row)


def _viewable(x: torch.Tensor, normalize: str) -> torch.Tensor:
    from digitlab.normalisation import to_unit

    return to_unit(x.detach().float().cpu(), normalize).clamp(0, 1)
