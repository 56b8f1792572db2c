"""`digitlab models` and `digitlab presets`: what there is to train, and from what."""

from __future__ import annotations

from typing import Annotated

import typer

from digitlab import choices
from digitlab.cli.options import Preset


def models() -> None:
    """List the registered models with their parameter counts."""
    from digitlab.models.registry import count_parameters, create_model, describe, list_models

    for name in list_models():
        params = count_parameters(create_model(name))
        typer.echo(f"{name:<12} {params:>10,} parameters  {describe(name)}")


def presets(
    name: Annotated[Preset | None, typer.Argument(
        help="Print this preset's settings file.")] = None,
) -> None:
    """List the training presets; with a name, print its TOML file (a start for --config)."""
    files = choices.preset_files()
    if name is not None:
        typer.echo(files[name], nl=False)
        return
    for preset, text in files.items():
        # Each file's own description: its first comment paragraph, up to its first colon.
        about = " ".join(line.lstrip("# ") for line in text.splitlines()[4:]
                         if line.startswith("#"))
        typer.echo(f"{preset:<10} {about.split(': ')[0].strip()}")
