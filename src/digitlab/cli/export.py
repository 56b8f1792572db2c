"""`digitlab export`: a model as ONNX or TorchScript, checked before it is kept."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from digitlab.cli.options import Root


def export(
    run: Annotated[Path | None, typer.Option(
        "--run", help="Run directory or weights file (default: the model shipped with "
        "digitlab).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="onnx or torchscript.")] = "onnx",
    out: Annotated[Path | None, typer.Option(
        "--out", help="File to write (default: model.onnx or model.pt in the run "
        "directory).")] = None,
    exporter: Annotated[str, typer.Option(
        help="ONNX exporter: auto (torch.export, falling back to TorchScript), dynamo or "
        "torchscript.")] = "auto",
    check_images: Annotated[int, typer.Option(
        "--check-images", help="Real test images the export is checked on against "
        "PyTorch.")] = 10000,
    root: Root = None,
) -> None:
    """Export a model to ONNX or TorchScript, checked on real test images before it is kept."""
    for line in export_run(run=run, fmt=fmt, out=out, exporter=exporter,
                           check_count=check_images, root=root):
        typer.echo(line)


def export_run(*, run: Path | None, fmt: str = "onnx", out: Path | None = None,
               exporter: str = "auto", check_count: int = 10000,
               root: Path | None = None) -> list[str]:
    """Export, check, and say what was written."""
    from digitlab.assets import default_weights
    from digitlab.export import SUFFIX, export_model

    if run is None:
        run = default_weights()
        out = out if out is not None else Path(f"default-model{SUFFIX.get(fmt, '')}")
    result = export_model(run=run, fmt=fmt, out=out, exporter=exporter,
                          check_count=check_count, root=root)
    contract = result.contract
    lines = [f"wrote {result.path} ({result.format}, {result.exporter} exporter, "
             f"{result.path.stat().st_size:,} bytes)",
             f"  input '{contract['input_name']}' float32 [N, 1, 28, 28], normalisation "
             f"{contract['normalize']}; output '{contract['output_name']}' "
             f"[N, {len(contract['classes'])}]",
             f"  {result.check.summary()}"]
    lines += [f"  note: {note}" for note in result.notes]
    return lines
