"""`digitlab report`: several runs' curves and results side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def report(
    runs: Annotated[list[Path], typer.Argument(help="Run directories to compare.")],
    out: Annotated[Path, typer.Option(
        "--out", help="HTML page to write (or a .png for the curves alone).")] = Path(
        "report.html"),
) -> None:
    """Overlay the loss and accuracy curves of several runs, with a table of their results."""
    from digitlab.report.compare import compare_runs

    typer.echo(f"wrote {compare_runs(runs, out=out)}")
