"""Run directories: config.json, model.safetensors and metrics.jsonl, all that evaluate,
predict, serve and export need. Weights are safetensors with the model's name and full
constructor arguments in the metadata, so a weights file alone rebuilds its model."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from digitlab.errors import RunDirError
from digitlab.files import atomic_write
from digitlab.models.registry import create_model

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
METRICS = "metrics.jsonl"
META_KEY = "digitlab"


def new_run_dir(out: Path | None, *, force: bool = False, base: Path = Path("runs")) -> Path:
    """The run directory to write: `out`, or runs/<timestamp>. A non-empty existing directory
    is refused unless force (then files are overwritten one by one; nothing is deleted)."""
    if out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = base / stamp
        suffix = 1
        while out.exists():
            out = base / f"{stamp}-{suffix}"
            suffix += 1
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise RunDirError(
            f"--out {out} already holds files; choose another directory, or pass --force to "
            "write over the files of the same name in it"
        )
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunDirError(f"{path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunDirError(f"{path} is not valid JSON ({exc})") from None


def append_metrics(run: Path, row: dict[str, Any]) -> None:
    with (run / METRICS).open("a") as fh:
        fh.write(json.dumps(row) + "\n")


def read_metrics(run: Path) -> list[dict[str, Any]]:
    path = run / METRICS
    if not path.exists():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise RunDirError(f"{path}:{number} is not valid JSON") from None
    return rows


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def weights_bytes(model: nn.Module, meta: dict[str, Any]) -> bytes:
    # clone(): parameters may be views of one flat buffer, which safetensors refuses to share.
    tensors = {k: v.detach().to("cpu").clone().contiguous() for k, v in model.state_dict().items()}
    return st_save(tensors, metadata={META_KEY: json.dumps(meta, sort_keys=True)})


def save_weights(path: Path, model: nn.Module, meta: dict[str, Any]) -> None:
    """meta must hold `model` and `model_args`; written atomically."""
    atomic_write(path, weights_bytes(model, meta))


def _weights_path(run_or_file: Path) -> Path:
    if run_or_file.is_dir():
        return run_or_file / WEIGHTS
    if run_or_file.exists():
        return run_or_file
    raise RunDirError(f"{run_or_file}: no such run directory or weights file")


def read_weights(run_or_file: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    path = _weights_path(run_or_file)
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise RunDirError(f"{path} is missing: is {run_or_file} a finished run?") from None
    try:
        tensors = st_load(blob)
        header_len = int.from_bytes(blob[:8], "little")
        header = json.loads(blob[8 : 8 + header_len])
        meta = json.loads(header.get("__metadata__", {}).get(META_KEY, "null"))
    except (SafetensorError, ValueError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunDirError(f"{path} is corrupt or not a digitlab weights file ({exc})") from None
    if not isinstance(meta, dict) or "model" not in meta:
        raise RunDirError(f"{path} has no digitlab metadata (model name and arguments)")
    return tensors, meta


def load_model(run_or_file: Path, device: torch.device | str = "cpu"
               ) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model from a run directory (or a weights file) alone; in eval mode."""
    tensors, meta = read_weights(run_or_file)
    model = create_model(meta["model"], **meta.get("model_args", {}))
    try:
        model.load_state_dict(tensors)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise RunDirError(f"{run_or_file}: weights do not fit the model ({first})") from None
    return model.to(device).eval(), meta
