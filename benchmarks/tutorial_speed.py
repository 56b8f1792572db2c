"""Seconds per epoch: the tutorial's own code path against digitlab's `tutorial` preset.

Both train the tutorial's network (784-128-256-128-64-10, sigmoid, Adam lr 0.0045, batch 64,
no shuffling) on real MNIST for the same number of epochs, in this one process, one after
the other. The tutorial side is its code as written: a map-style Dataset that turns each
uint8 image into a PIL image and then a float tensor (what torchvision's MNIST + ToTensor
do), a DataLoader of batch 64, nn.Module forward + autograd + torch.optim.Adam's defaults,
and loss.item() every batch. Evaluation is excluded from both timings.

    python benchmarks/tutorial_speed.py --epochs 2 [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))

import record  # noqa: E402

from digitlab.config import resolve  # noqa: E402
from digitlab.console import Console  # noqa: E402
from digitlab.data import sources  # noqa: E402
from digitlab.data.loader import load_split  # noqa: E402
from digitlab.engine.train import fit  # noqa: E402


class TutorialMNIST(Dataset):
    """torchvision.datasets.MNIST with transform=ToTensor(), without torchvision."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.data = torch.from_numpy(images.copy())
        self.targets = torch.from_numpy(labels.astype(np.int64))

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = Image.fromarray(self.data[index].numpy(), mode="L")
        pic = torch.from_numpy(np.array(img, np.uint8, copy=True))
        tensor = pic.view(28, 28, 1).permute(2, 0, 1).contiguous().to(torch.float32).div(255)
        return tensor, int(self.targets[index])


class NeuralNetwork(nn.Module):  # the tutorial's class, verbatim in structure
    def __init__(self) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.hidden1 = nn.Linear(28 * 28, 128)
        self.hidden2 = nn.Linear(128, 256)
        self.hidden3 = nn.Linear(256, 128)
        self.hidden4 = nn.Linear(128, 64)
        self.out = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(x)
        x = torch.sigmoid(self.hidden1(x))
        x = torch.sigmoid(self.hidden2(x))
        x = torch.sigmoid(self.hidden3(x))
        x = torch.sigmoid(self.hidden4(x))
        return self.out(x)


def tutorial_epochs(root: Path, epochs: int) -> tuple[list[float], float]:
    train = load_split("mnist", root, "train")
    test = load_split("mnist", root, "test")
    train_dl = DataLoader(TutorialMNIST(train.images, train.labels), batch_size=64)
    test_dl = DataLoader(TutorialMNIST(test.images, test.labels), batch_size=64)
    torch.manual_seed(0)
    model = NeuralNetwork()
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.0045)
    times = []
    sink = io.StringIO()
    for _ in range(epochs):
        started = time.perf_counter()
        model.train()
        with contextlib.redirect_stdout(sink):
            for number, (x, y) in enumerate(train_dl, 1):
                loss = loss_fn(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                loss_value = loss.item()
                if number % 200 == 0:
                    print(f"loss:{loss_value:>7f} [number: {number}]")
        times.append(time.perf_counter() - started)
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in test_dl:
            correct += (model(x).argmax(1) == y).sum().item()
    return times, correct / len(test.labels)


def digitlab_epochs(root: Path, epochs: int) -> tuple[list[float], float]:
    cfg = resolve(preset="tutorial", flags={"epochs": epochs})
    with tempfile.TemporaryDirectory() as tmp:
        result = fit(cfg, out=Path(tmp) / "run", root=root, console=Console(quiet=True))
    return [row["seconds"] for row in result.metrics], result.final.accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--root", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, metavar="FILE",
                        help="also write the result here (benchmarks/results/...)")
    args = parser.parse_args()
    root = args.root or sources.default_root()
    sources.fetch("mnist", root=root)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.epochs} epoch(s) each")
    tut_times, tut_acc = tutorial_epochs(root, args.epochs)
    dl_times, dl_acc = digitlab_epochs(root, args.epochs)
    tut, dl = statistics.mean(tut_times), statistics.mean(dl_times)
    for label, mean, times, acc in (("tutorial code", tut, tut_times, tut_acc),
                                     ("digitlab", dl, dl_times, dl_acc)):
        each = ", ".join(f"{t:.3f}" for t in times)
        print(f"{label:<14}: {mean:6.3f} s/epoch  (epochs: {each})  "
              f"test accuracy after {args.epochs} epoch(s): {100 * acc:.2f}%")
    print(f"speed-up      : {tut / dl:.1f}x")
    record.write(
        args.json, benchmark="tutorial_speed",
        figures={"epochs": args.epochs, "tutorial_seconds_per_epoch": tut_times,
                 "digitlab_seconds_per_epoch": dl_times, "tutorial_accuracy": tut_acc,
                 "digitlab_accuracy": dl_acc, "speedup": tut / dl},
        tables=[record.table(
            f"The tutorial's network, {args.epochs} epoch(s) on the CPU: its own code "
            "against `digitlab train --preset tutorial`",
            ["code", "seconds per epoch", f"test accuracy after {args.epochs} epoch(s)"],
            [["the tutorial's code", f"{tut:.2f}", f"{100 * tut_acc:.2f}%"],
             ["digitlab `--preset tutorial`", f"{dl:.2f}", f"{100 * dl_acc:.2f}%"],
             ["speed-up", f"{tut / dl:.1f}x", ""]])],
        torch_threads=torch.get_num_threads())


if __name__ == "__main__":
    main()
