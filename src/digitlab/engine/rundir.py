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
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from digitlab.errors import DigitlabError, RunDirError, first_line
from digitlab.files import atomic_write
from digitlab.models.registry import create_model

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
METRICS = "metrics.jsonl"
META_KEY = "digitlab"
# A model's name, arguments and figures take a few hundred characters; far longer metadata
# would describe a model of absurdly many layers, each built before its size is checked.
META_MAX = 1 << 16


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
    """A JSON object from a run directory; RunDirError if it is missing or anything else."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise RunDirError(f"{path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise RunDirError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise RunDirError(f"{path} holds a JSON {type(data).__name__}, not an object")
    return data


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


_NUMBER = (int, float)
# What the weights metadata may hold, and the types each key must have (None: optional).
_META_TYPES: dict[str, tuple[type, ...]] = {
    "model": (str,), "model_args": (dict,), "classes": (list,), "normalize": (str,),
    "dataset": (str,), "outliers": (*_NUMBER, type(None)),
    "test_accuracy": (*_NUMBER, type(None)), "epoch": (int, type(None)),
}


def check_meta(meta: Any, path: Path) -> dict[str, Any]:
    """The weights metadata, refused with RunDirError unless every known key has its type."""
    if not isinstance(meta, dict) or "model" not in meta:
        raise RunDirError(f"{path} has no digitlab metadata (model name and arguments)")
    for key, types in _META_TYPES.items():
        value = meta.get(key)
        if key in meta and (not isinstance(value, types) or isinstance(value, bool)):
            raise RunDirError(f"{path}: metadata {key!r} is a {type(value).__name__}, not "
                              f"{' or '.join(t.__name__ for t in types)}")
    classes = meta.get("classes", [])
    if not all(isinstance(c, str | int) and not isinstance(c, bool) for c in classes):
        raise RunDirError(f"{path}: metadata 'classes' must be a list of names")
    return meta


def read_header(path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, Any]]:
    """The tensors' shapes and the checked digitlab metadata, reading the header alone."""
    try:
        with safe_open(path, framework="pt") as fh:
            shapes = {key: tuple(fh.get_slice(key).get_shape()) for key in fh.keys()}  # noqa: SIM118
            stored = (fh.metadata() or {}).get(META_KEY, "null")
        if len(stored) > META_MAX:
            raise RunDirError(f"{path}: its digitlab metadata is {len(stored):,} characters, "
                              f"more than the {META_MAX:,} a model description takes")
        meta = json.loads(stored)
    except FileNotFoundError:
        raise RunDirError(f"{path} is missing: is it a finished run?") from None
    except (SafetensorError, OSError, ValueError, RecursionError) as exc:
        raise RunDirError(f"{path} is corrupt or not a digitlab weights file ({exc})") from None
    return shapes, check_meta(meta, path)


def read_weights(run_or_file: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    path = _weights_path(run_or_file)
    _, meta = read_header(path)
    try:
        tensors = st_load(path.read_bytes())
    except FileNotFoundError:
        raise RunDirError(f"{path} is missing: is {run_or_file} a finished run?") from None
    except (SafetensorError, ValueError) as exc:
        raise RunDirError(f"{path} is corrupt or not a digitlab weights file ({exc})") from None
    return tensors, meta


def _build(run_or_file: Path, meta: dict[str, Any], shapes: dict[str, tuple[int, ...]]
           ) -> nn.Module:
    """The model the metadata describes, built only once a skeleton of it (on the meta
    device, where nothing is allocated) has exactly the tensors the file holds: crafted
    arguments cannot make it allocate more than the file's own size."""
    name, args = meta["model"], meta.get("model_args", {})
    try:
        with torch.device("meta"):
            skeleton = create_model(name, **args)
    except (DigitlabError, TypeError, ValueError, RuntimeError) as exc:
        raise RunDirError(f"{run_or_file}: its metadata does not describe a model "
                          f"({first_line(exc)})") from None
    wanted = {key: tuple(t.shape) for key, t in skeleton.state_dict().items()}
    if wanted != shapes:
        missing = sorted(set(wanted) - set(shapes))
        extra = sorted(set(shapes) - set(wanted))
        differ = sorted(k for k in set(wanted) & set(shapes) if wanted[k] != shapes[k])
        why = (f"{differ[0]} is {list(shapes[differ[0]])} in the file, "
               f"{list(wanted[differ[0]])} in a {name} with its arguments" if differ else
               f"missing {missing[0]}" if missing else f"unexpected {extra[0]}")
        raise RunDirError(f"{run_or_file}: weights do not fit the model ({why})")
    return create_model(name, **args)


def load_model(run_or_file: Path, device: torch.device | str = "cpu"
               ) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model from a run directory (or a weights file) alone; in eval mode."""
    path = _weights_path(run_or_file)
    shapes, meta = read_header(path)
    model = _build(run_or_file, meta, shapes)
    tensors, _ = read_weights(path)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as exc:
        raise RunDirError(f"{run_or_file}: weights do not fit the model ({first_line(exc)})"
                          ) from None
    return model.to(device).eval(), meta
