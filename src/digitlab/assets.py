"""The files shipped inside the package: the default model (its weights, their ONNX export
and its card), the training presets and the tutorial's sweep space. Every lookup of them
goes through here."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from digitlab.errors import RunDirError

__all__ = ["DEFAULT_CARD", "DEFAULT_ONNX", "DEFAULT_WEIGHTS", "default_weights", "folder",
           "read_card"]

DEFAULT_WEIGHTS = "default-model.safetensors"
DEFAULT_CARD = "default-model.json"  # how the shipped model was trained, and its figures
# The same weights exported to ONNX (`make default-model`), stamped with the SHA-256 of the
# weights they came from: where onnxruntime is installed the shipped model runs there, and
# torch is never imported.
DEFAULT_ONNX = "default-model.onnx"


def folder() -> Path:
    """The package's assets folder. digitlab is installed as files, never imported from a
    zip (its compiled part could not be), so this is a real folder."""
    return Path(str(resources.files("digitlab") / "assets"))


def default_weights() -> Path:
    """The shipped model's weights (what predict, serve and export use without --run)."""
    path = folder() / DEFAULT_WEIGHTS
    if not path.is_file():
        raise RunDirError(f"the package's default model is missing ({path}); "
                          "run `make default-model` or pass --run")
    return path


def read_card(where: Path | None = None) -> dict[str, Any]:
    """The shipped model's card (how it was trained, its figures) in `where` (default: the
    package's assets); {} when there is none."""
    card = (where or folder()) / DEFAULT_CARD
    return json.loads(card.read_text()) if card.is_file() else {}
