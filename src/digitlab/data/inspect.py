"""`digitlab data info` and `digitlab data show`: what the tutorial prints and draws."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from digitlab.data import sources
from digitlab.data.loader import load_split
from digitlab.errors import DigitlabError


def dataset_info(name: str, root: Path, batch_size: int = 64) -> dict[str, Any]:
    spec = sources.get_spec(name)
    info: dict[str, Any] = {"dataset": name, "root": str(sources.raw_dir(spec, root)),
                            "classes": list(spec.classes), "splits": {}}
    for split in ("train", "test"):
        data = load_split(name, root, split)
        pixels = data.images.astype(np.float64) / 255.0
        info["splits"][split] = {
            "count": int(len(data.labels)),
            "per_class": np.bincount(data.labels, minlength=len(spec.classes)).tolist(),
            "pixel_mean": float(pixels.mean()),
            "pixel_std": float(pixels.std()),
        }
    n = min(batch_size, info["splits"]["test"]["count"])
    info["batch"] = {"x_shape": [n, 1, 28, 28], "x_dtype": "torch.float32",
                     "y_shape": [n], "y_dtype": "torch.int64"}
    return info


def show_grid(name: str, root: Path, *, split: str, start: int, count: int, out: Path) -> Path:
    """The tutorial's figure: images from `start`, label as each title, no axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from digitlab.files import atomic_write

    data = load_split(name, root, split)
    if count < 1:
        raise DigitlabError("--count must be at least 1")
    if not 0 <= start < len(data.labels):
        raise DigitlabError(f"--start must be in [0, {len(data.labels) - 1}] for the {split} split")
    count = min(count, len(data.labels) - start)
    classes = sources.get_spec(name).classes
    cols = int(np.ceil(np.sqrt(count)))
    rows = int(np.ceil(count / cols))
    figure = plt.figure(figsize=(2 * cols, 2 * rows))
    for i in range(count):
        figure.add_subplot(rows, cols, i + 1)
        plt.title(classes[data.labels[start + i]])
        plt.axis("off")
        plt.imshow(data.images[start + i], cmap="gray")
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(figure)
    atomic_write(out, buffer.getvalue())
    return out
