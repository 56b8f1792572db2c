"""The names a setting may take, where more than one module (and the command line's
--help) needs them. Light on purpose: the CLI imports it without PyTorch.

Each set of names is a Literal type (what the settings model, Typer's choices and the type
checker read) and a tuple of its names (what code that lists or checks them reads)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, TypeAlias, get_args

from digitlab import assets
from digitlab.normalisation import Normalize

Optimizer = Literal["adam", "adamw", "sgd"]
Schedule = Literal["none", "onecycle", "cosine", "step"]
Amp = Literal["none", "auto", "bf16", "fp16"]
LossAverage = Literal["batch", "sample"]
Backend = Literal["torch", "onnxruntime"]

__all__ = ["AMP_MODES", "BACKENDS", "DEVICES", "OPTIMIZERS", "PRESETS", "SCHEDULES", "Amp",
           "Backend", "LossAverage", "Normalize", "Optimizer", "Preset", "Schedule",
           "preset_files"]

OPTIMIZERS: tuple[str, ...] = get_args(Optimizer)
SCHEDULES: tuple[str, ...] = get_args(Schedule)
AMP_MODES: tuple[str, ...] = get_args(Amp)
BACKENDS: tuple[str, ...] = get_args(Backend)
DEVICES = ("auto", "cpu", "cuda", "mps")  # and cuda:N


def preset_files() -> dict[str, str]:
    """Each named preset's TOML text (assets/presets/NAME.toml), by name."""
    folder = assets.folder() / "presets"
    return {entry.name.removesuffix(".toml"): entry.read_text(encoding="utf-8")
            for entry in sorted(folder.iterdir(), key=lambda e: e.name)
            if entry.name.endswith(".toml")}


PRESETS = tuple(preset_files())
# The presets are files, so their Literal is built at run time; a type checker, which
# cannot read that, sees text.
if TYPE_CHECKING:
    Preset: TypeAlias = str
else:
    Preset = Literal[PRESETS]
