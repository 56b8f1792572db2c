"""The names a setting may take, where more than one module (and the command line's
--help) needs them. Light on purpose: the CLI imports it without PyTorch."""

from __future__ import annotations

from digitlab import assets

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("none", "onecycle", "cosine", "step")
AMP_MODES = ("none", "auto", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda", "mps")  # and cuda:N
BACKENDS = ("torch", "onnxruntime")


def preset_files() -> dict[str, str]:
    """Each named preset's TOML text (assets/presets/NAME.toml), by name."""
    folder = assets.folder() / "presets"
    return {entry.name.removesuffix(".toml"): entry.read_text(encoding="utf-8")
            for entry in sorted(folder.iterdir(), key=lambda e: e.name)
            if entry.name.endswith(".toml")}


PRESETS = tuple(preset_files())
