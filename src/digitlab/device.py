"""Device choice: `auto` picks cuda, then mps, then cpu, as the tutorial does."""

from __future__ import annotations

import torch

from digitlab.choices import DEVICES
from digitlab.errors import DigitlabError


def auto_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def resolve_device(name: str) -> torch.device:
    """Turn a --device value into a torch.device, refusing one this machine does not have."""
    if name == "auto":
        return torch.device(auto_device())
    if name not in DEVICES and not name.startswith("cuda:"):
        raise DigitlabError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DigitlabError("--device cuda was asked for, but no CUDA device is available")
    if name == "mps" and auto_device() != "mps":
        raise DigitlabError("--device mps was asked for, but MPS is not available here")
    return torch.device(name)
