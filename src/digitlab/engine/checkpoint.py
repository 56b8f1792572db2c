"""Training checkpoints: everything needed to continue a run as if it had never stopped.

`checkpoint.pt` in the run directory is replaced atomically (temp file, fsync, rename) and
the one before it is kept as `checkpoint.prev.pt`, so a crash at any moment leaves at least
one good file. Saved with torch.save; read back only with torch.load(weights_only=True):
random-number-generator states are stored as tensors and lists, never as pickled objects.
A SHA-256 over the contents catches files that load but were damaged.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from digitlab.errors import RunDirError
from digitlab.files import atomic_output

CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"
FORMAT = "digitlab-checkpoint"
VERSION = 1


def _feed(h: Any, obj: Any) -> None:
    """Hash a nested structure of dicts, lists, tensors and scalars in a fixed order."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().to("cpu").contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, dict):
        h.update(b"{")
        for key in sorted(obj, key=repr):
            h.update(repr(key).encode())
            _feed(h, obj[key])
        h.update(b"}")
    elif isinstance(obj, list | tuple):
        h.update(b"[")
        for item in obj:
            _feed(h, item)
        h.update(b"]")
    else:
        h.update(repr(obj).encode())


def digest(payload: dict[str, Any]) -> str:
    h = hashlib.sha256()
    _feed(h, payload)
    return h.hexdigest()


# --- random-number generators ------------------------------------------------------------


def capture_rng(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) global states plus the named generators, as plain
    lists and tensors so that a weights_only load can read them."""
    version, internal, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss),
                  float(cached)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "generators": {name: g.get_state() for name, g in generators.items()},
    }
    return state


def restore_rng(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, g in generators.items():
        g.set_state(state["generators"][name])


# --- files --------------------------------------------------------------------------------


def save(run: Path, payload: dict[str, Any]) -> Path:
    """Write run/checkpoint.pt atomically, keeping the previous one as checkpoint.prev.pt."""
    body = {"format": FORMAT, "version": VERSION, **payload}
    body["sha256"] = digest(body)
    buffer = io.BytesIO()
    torch.save(body, buffer)
    path = run / CHECKPOINT
    with atomic_output(path) as fh:
        fh.write(buffer.getbuffer())
        if path.exists():
            os.replace(path, run / PREVIOUS)
        # Killed here, only checkpoint.prev.pt exists: load() falls back to it.
    return path


def read(path: Path) -> dict[str, Any]:
    """Load and verify one checkpoint file; RunDirError says what is wrong with it."""
    try:
        body = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise RunDirError(f"{path} is missing") from None
    except Exception as exc:  # truncated zip, garbage bytes, unpickling refused, ...
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        # weights_only refusals bury the reason under advice on how to switch them off
        reason = next((line.strip() for line in lines if "Unpickler error" in line), lines[0])
        raise RunDirError(f"{path} is corrupt or truncated ({reason[:200]})") from None
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise RunDirError(f"{path} is not a digitlab checkpoint")
    if body.get("version") != VERSION:
        raise RunDirError(f"{path} has checkpoint version {body.get('version')}; "
                          f"this digitlab reads version {VERSION}")
    stored = body.pop("sha256", None)
    if stored != digest(body):
        raise RunDirError(f"{path} is corrupt: its contents do not match their checksum")
    return body


def load(run: Path, *, report: Callable[[str], None] = print) -> tuple[dict[str, Any], Path]:
    """The newest good checkpoint of a run: checkpoint.pt, else checkpoint.prev.pt (saying
    why). RunDirError when neither can be used."""
    problems = []
    for name in (CHECKPOINT, PREVIOUS):
        path = run / name
        if not path.exists():
            continue
        try:
            body = read(path)
        except RunDirError as exc:
            problems.append(str(exc))
            continue
        if problems:
            report(f"warning: {'; '.join(problems)}; resuming from {path} instead")
        return body, path
    if not run.is_dir():
        raise RunDirError(f"{run}: no such run directory")
    if problems:
        raise RunDirError("; ".join(problems) + "; no good checkpoint is left to resume from")
    raise RunDirError(f"{run} has no checkpoint to resume from ({CHECKPOINT} is missing)")
