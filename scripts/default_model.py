"""Install a trained run as the model shipped inside the package (`make default-model`).

    python scripts/default_model.py runs/default-model \
        --benchmark runs/default-model/realworld.json

copies the run's weights to src/digitlab/assets/default-model.safetensors and writes
default-model.json beside them: how the model was trained (the run's config and the
command) and its figures (MNIST test accuracy, the photo-like benchmark), which
`Recognizer.info()` reports and the README quotes. It also exports those weights to
default-model.onnx (checked on the 10,000 MNIST test images, stamped with the weights'
SHA-256), which the package runs on onnxruntime where that is installed.

    python scripts/default_model.py --onnx     # only re-export the installed weights

A maintainer's tool: it writes into this checkout's source tree (what the next wheel
ships), never into an installed package.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from digitlab.assets import DEFAULT_CARD, DEFAULT_ONNX, DEFAULT_WEIGHTS
from digitlab.engine.rundir import CONFIG, WEIGHTS, read_json, read_weights
from digitlab.errors import DigitlabError
from digitlab.files import atomic_write

ASSETS = Path(__file__).resolve().parent.parent / "src" / "digitlab" / "assets"
COMMAND = "make default-model"
MAX_BYTES = 4 * 2**20  # the wheel carries this file: keep the model compact


def install(run: Path, *, benchmark: dict[str, Any] | None = None,
            assets: Path = ASSETS) -> dict[str, Any]:
    """Copy run's weights into assets and write the card; returns the card. Raises
    DigitlabError for weights too large to ship."""
    _, meta = read_weights(run)
    blob = (run / WEIGHTS).read_bytes()
    if len(blob) > MAX_BYTES:
        raise DigitlabError(f"{run / WEIGHTS} is {len(blob) / 2**20:.1f} MiB; the shipped "
                            f"model must stay under {MAX_BYTES / 2**20:.0f} MiB")
    config = read_json(run / CONFIG)
    card = {
        "command": COMMAND,
        "config": config,
        "figures": {
            "mnist_test_accuracy": meta.get("test_accuracy"),
            "mnist_test_loss": meta.get("test_loss"),
            **(benchmark or {}),
        },
        "weights_bytes": len(blob),
    }
    atomic_write(assets / DEFAULT_WEIGHTS, blob)
    atomic_write(assets / DEFAULT_CARD, (json.dumps(card, indent=2, sort_keys=True) + "\n")
                 .encode())
    export_onnx(assets)
    return card


def export_onnx(assets: Path = ASSETS, *, check_count: int = 10000) -> Path:
    """Export the installed weights to DEFAULT_ONNX, checked against PyTorch on real test
    images, with the weights' SHA-256 in its contract (a stale file is never used)."""
    from digitlab.export import export_model

    weights = assets / DEFAULT_WEIGHTS
    out = assets / DEFAULT_ONNX
    stamp = {"weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
    export_model(run=weights, fmt="onnx", out=out, exporter="torchscript",
                 check_count=check_count, contract_extra=stamp)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, nargs="?", help="the trained run directory")
    parser.add_argument("--benchmark", type=Path, default=None,
                        help="JSON figures written by benchmarks/realworld.py --json")
    parser.add_argument("--onnx", action="store_true",
                        help="only export the installed weights to ONNX again")
    args = parser.parse_args(argv)
    try:
        if args.onnx:
            print(f"wrote {export_onnx()}")
            return 0
        if args.run is None:
            parser.error("give the run directory to install (or --onnx)")
        figures = json.loads(args.benchmark.read_text()) if args.benchmark else None
        card = install(args.run, benchmark=figures)
    except DigitlabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"installed {ASSETS / DEFAULT_WEIGHTS} ({card['weights_bytes']:,} bytes)")
    print(json.dumps(card["figures"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
