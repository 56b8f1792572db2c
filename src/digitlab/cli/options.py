"""What several commands share: the -h flag, --root, and the choices --help lists."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from digitlab.choices import Backend, Preset

__all__ = ["HELP", "Backend", "Preset", "Root", "data_root"]

HELP = {"help_option_names": ["-h", "--help"]}

Root = Annotated[Path | None, typer.Option(
    "--root", help="Data directory (default: $DIGITLAB_DATA, else ~/.cache/digitlab).")]


def data_root(root: Path | None) -> Path:
    from digitlab.data.sources import default_root

    return root if root is not None else default_root()
