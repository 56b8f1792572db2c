"""The `best` preset over several seeds: each model's final-epoch test accuracy (no epoch is
picked by test accuracy), their mean, and the accuracy of their ensemble (mean of the
members' probabilities), with and without test-time augmentation.

    python benchmarks/best_ensemble.py --device cuda --seeds 3
    python benchmarks/best_ensemble.py --device cuda --seeds 3 --kernels 3,5,7
    python benchmarks/best_ensemble.py --device cpu --seeds 2 --epochs 1 --limit-train 2000

--kernels gives each seed in turn a cnn-best kernel size: 3,5,7 is the paper's mixed
ensemble of its M3, M5 and M7 stacks (more diverse members, a better vote).

The runs are kept under --out, so `digitlab evaluate RUN1 RUN2 RUN3 --tta` can redo the
ensemble figure from them.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import record  # noqa: E402

from digitlab.config import resolve  # noqa: E402
from digitlab.console import Console  # noqa: E402
from digitlab.device import resolve_device  # noqa: E402
from digitlab.engine.ensemble import evaluate_ensemble  # noqa: E402
from digitlab.engine.train import fit, load_data  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--preset", default="best")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    ap.add_argument("--limit-train", type=int, default=None, help="train on N images only")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--kernels", default=None,
                    help="cnn-best kernel size per seed, cycling, e.g. 3,5,7 (default: the "
                    "preset's)")
    ap.add_argument("--out", type=Path, default=Path("runs/best-ensemble"))
    ap.add_argument("--root", type=Path, default=None, help="data directory")
    ap.add_argument("--json", type=Path, default=None, metavar="FILE",
                    help="also write the result here (benchmarks/results/...)")
    args = ap.parse_args()

    device = resolve_device(args.device)
    flags: dict[str, Any] = {"device": args.device, "epochs": args.epochs,
                             "limit_train": args.limit_train,
                             "compile": True if args.compile else None}
    cfg = resolve(preset=args.preset, flags=flags)
    data = load_data(cfg, args.root, device, Console(quiet=True))
    print(f"# {args.preset} on {device.type}: {cfg.model} {cfg.model_args}"
          f"{f' with kernels {args.kernels} by seed' if args.kernels else ''}, {cfg.epochs} "
          f"epochs, batch {cfg.batch_size}, amp {cfg.amp}, torch {torch.__version__}",
          flush=True)

    kernels = [int(k) for k in args.kernels.split(",")] if args.kernels else []
    runs, finals, seconds = [], [], []
    for seed in range(args.seeds):
        run = args.out / f"seed-{seed}"
        member = {**flags, "seed": seed}
        if kernels:
            member["model_args"] = {"kernel": kernels[seed % len(kernels)]}
            run = args.out / f"seed-{seed}-k{kernels[seed % len(kernels)]}"
        started = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            result = fit(resolve(preset=args.preset, flags=member), out=run,
                         force=True, root=args.root, console=Console(quiet=True),
                         preloaded=data)
        seconds.append(time.perf_counter() - started)
        runs.append(run)
        finals.append(result.final.accuracy)
        print(f"  seed {seed}: final-epoch test accuracy {100 * result.final.accuracy:.2f}%  "
              f"({seconds[-1]:.1f}s, {run})", flush=True)

    spread = statistics.stdev(finals) if len(finals) > 1 else 0.0
    print(f"single model, final epoch: {100 * statistics.mean(finals):.3f}% ± "
          f"{100 * spread:.3f} (mean ± std of {len(finals)} seeds)")
    figures: dict[str, Any] = {"members": finals, "seconds": seconds}
    for tta in (False, True):
        ens = evaluate_ensemble(runs, root=args.root, device=args.device, tta=tta)
        label = "with TTA" if tta else "plain"
        figures[f"ensemble_{'tta' if tta else 'plain'}"] = ens.ensemble.accuracy
        members = ", ".join(f"{100 * m.result.accuracy:.2f}" for m in ens.members)
        print(f"ensemble of {len(runs)} ({label}): {100 * ens.ensemble.accuracy:.2f}%  "
              f"[members {members}]")
    print(f"training time per model: {statistics.mean(seconds):.1f}s")
    (args.out / "summary.json").write_text(json.dumps(figures, indent=2))
    rows = [[f"seed {seed}", f"{100 * acc:.2f}%", f"{sec:.0f} s"]
            for seed, (acc, sec) in enumerate(zip(finals, seconds, strict=True))]
    rows += [[f"ensemble of {len(runs)}", f"{100 * figures['ensemble_plain']:.2f}%", ""],
             [f"ensemble of {len(runs)}, with TTA", f"{100 * figures['ensemble_tta']:.2f}%", ""]]
    record.write(args.json, benchmark=f"best_ensemble_{device.type}", figures=figures,
                 tables=[record.table(
                     f"`{args.preset}` preset on {device.type}: final-epoch test accuracy "
                     f"({cfg.epochs} epochs) of each seed, and their ensemble",
                     ["model", "MNIST test accuracy", "training time"], rows)],
                 device=device.type, gpu=torch.cuda.get_device_name()
                 if device.type == "cuda" else None)


if __name__ == "__main__":
    main()
