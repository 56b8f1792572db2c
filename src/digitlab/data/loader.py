"""Datasets as tensors on the training device, and batches as slices of them.

Following airbench: images are loaded once as uint8, normalised once on the device, and a
batch is an index slice (no per-sample Python, no DataLoader workers).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch

from digitlab.data import sources
from digitlab.data.idx import read_raw
from digitlab.normalisation import mean_std


@dataclass
class Split:
    images: np.ndarray  # uint8 [N, 28, 28]
    labels: np.ndarray  # uint8 [N]


def load_split(name: str, root: Path, split: str) -> Split:
    """Read one split (train or test) from the verified files under root."""
    spec = sources.get_spec(name)
    prefix = "train" if split == "train" else "test"
    arrays = []
    for key in (f"{prefix}_images", f"{prefix}_labels"):
        path = sources.split_path(spec, root, key)
        arrays.append(sources.check_split(spec, key, read_raw(path), name=str(path)))
    images, labels = arrays
    if len(images) != len(labels):
        raise sources.DataError(
            f"{spec.folder}/{prefix}: {len(images)} images but {len(labels)} labels"
        )
    return Split(images, labels)


def normalise(images: torch.Tensor, mode: str) -> torch.Tensor:
    """uint8 [N, 28, 28] -> float32 [N, 1, 28, 28], scaled as `mode` says
    (digitlab.normalisation)."""
    mean, std = mean_std(mode)
    x = images.unsqueeze(1).to(torch.float32).div_(255.0)
    if mean != 0.0 or std != 1.0:
        x.sub_(mean).div_(std)
    return x


class Uint8Images:
    """Images kept as uint8 [N, 28, 28] that index as normalised float32 [B, 1, 28, 28]:
    a quarter of the memory of normalising all of them up front (60,000 MNIST images: 47 MB
    instead of 188 MB) for a conversion per batch that costs next to nothing. Supports what
    batches and shards use: slices and index tensors."""

    def __init__(self, images: torch.Tensor, mode: str) -> None:
        self.images = images
        self.mode = mode

    def __getitem__(self, index: slice | torch.Tensor) -> torch.Tensor:
        return normalise(self.images[index], self.mode)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> torch.Size:
        return torch.Size([len(self.images), 1, *self.images.shape[1:]])

    @property
    def device(self) -> torch.device:
        return self.images.device


@dataclass
class DeviceData:
    """One split on the device: normalised images and int64 labels."""

    x: torch.Tensor  # float32 [N, 1, 28, 28]
    y: torch.Tensor  # int64 [N]

    @classmethod
    def from_split(cls, split: Split, device: torch.device, normalize: str,
                   limit: int = 0, *, lazy: bool = False) -> DeviceData:
        """lazy: keep uint8 and normalise per batch (Uint8Images); x then supports only
        slicing and indexing, which is all that batches() and training do."""
        images, labels = split.images, split.labels
        if limit:
            images, labels = images[:limit], labels[:limit]
        x = torch.from_numpy(np.array(images, copy=True)).to(device)  # the IDX buffer is read-only
        y = torch.from_numpy(labels.astype(np.int64)).to(device)
        if lazy:
            return cls(cast(torch.Tensor, Uint8Images(x, normalize)), y)
        return cls(normalise(x, normalize), y)

    def __len__(self) -> int:
        return len(self.y)


def load_test_set(name: str, root: Path | None, device: torch.device, normalize: str, *,
                  limit: int = 0) -> DeviceData:
    """A dataset's verified test split on the device (fetched first if it is missing)."""
    root = root if root is not None else sources.default_root()
    sources.fetch(name, root=root)
    return DeviceData.from_split(load_split(name, root, "test"), device, normalize, limit)


def batches(
    data: DeviceData, batch_size: int, *, order: torch.Tensor | None = None, start: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (x, y) batches: slices in stored order, or gathers along `order` (a permutation).

    `start` skips the first batches, so a resumed epoch continues where it stopped.
    """
    n = len(data)
    for i in range(start * batch_size, n, batch_size):
        if order is None:
            yield data.x[i : i + batch_size], data.y[i : i + batch_size]
        else:
            idx = order[i : i + batch_size]
            yield data.x[idx], data.y[idx]


def num_batches(n: int, batch_size: int) -> int:
    return -(-n // batch_size)
