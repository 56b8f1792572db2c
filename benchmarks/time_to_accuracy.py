"""Wall time to >= 99.0% (and >= 99.5%) MNIST test accuracy, over several seeds.

For each seed: digitlab's own fit() with the preset's settings, the data already on the
device (loaded once, before any timing). The time runs from model construction to the end
of the first epoch whose test accuracy reaches the target, evaluation included; it is the
`elapsed` column fit() writes to metrics.jsonl. A short warm-up run first takes the
one-time costs (lazy imports, kernel generation) out of the first seed's figure.

--baseline also times a common "naive" recipe (24@5x5 and 32@3x3 convolutions, FC 256)
written the way most tutorials write it (NCHW, DataLoader over a TensorDataset,
zero_grad/backward/step, Adam with default kernels), in the same process and on the same
data, so the speed-up is measured, not quoted.

    python benchmarks/time_to_accuracy.py --device cpu --preset fast --seeds 5 --baseline
    python benchmarks/time_to_accuracy.py --device cuda --preset fast --seeds 5
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import record  # noqa: E402

from digitlab.config import resolve  # noqa: E402
from digitlab.console import Console  # noqa: E402
from digitlab.data.loader import DeviceData  # noqa: E402
from digitlab.device import resolve_device  # noqa: E402
from digitlab.engine.train import fit, load_data  # noqa: E402

TARGETS = (0.990, 0.995)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--seeds", type=int, default=5, help="how many seeds (0, 1, ...)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    ap.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                    help='override a setting, e.g. --set \'model_args={"hidden": 64}\'')
    ap.add_argument("--baseline", action="store_true",
                    help="also time the naive recipe on the same data and seeds")
    ap.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up run")
    ap.add_argument("--root", type=Path, default=None, help="data directory")
    ap.add_argument("--json", type=Path, default=None, metavar="FILE",
                    help="also write the result here (benchmarks/results/...)")
    return ap.parse_args()


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    flags: dict[str, Any] = {"device": args.device}
    if args.epochs is not None:
        flags["epochs"] = args.epochs
    if args.compile:
        flags["compile"] = True
    for item in args.set:
        key, _, value = item.partition("=")
        flags[key] = json.loads(value)
    return flags


def time_to(rows: list[dict[str, Any]], target: float, key: str = "elapsed") -> float | None:
    return next((r[key] for r in rows if r["test_accuracy"] >= target), None)


def run_preset(preset: str, flags: dict[str, Any], seed: int, data: Any) -> list[dict]:
    cfg = resolve(preset=preset, flags={**flags, "seed": seed})
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        return fit(cfg, out=Path(tmp) / "run", console=Console(quiet=True),
                   preloaded=data).metrics


class NaiveNet(nn.Module):
    """The naive recipe's network: 24@5x5 and 32@3x3 convolutions, FC 256."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 24, 5)
        self.conv2 = nn.Conv2d(24, 32, 3)
        self.fc1 = nn.Linear(32 * 5 * 5, 256)
        self.fc2 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2(x), 2))
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


def run_naive(seed: int, train: DeviceData, test: DeviceData) -> list[dict]:
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(seed)
    started = time.perf_counter()
    model = NaiveNet().to(train.x.device)
    loader = DataLoader(TensorDataset(train.x, train.y), batch_size=256, shuffle=True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.7, 0.9))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=len(loader))
    model.train()
    for x, y in loader:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in DataLoader(TensorDataset(test.x, test.y), batch_size=1000):
            correct += (model(x).argmax(1) == y).sum().item()
    return [{"epoch": 1, "test_accuracy": correct / len(test),
             "elapsed": time.perf_counter() - started}]


def summarise(name: str, runs: list[list[dict]]) -> dict[str, Any]:
    final = [rows[-1]["test_accuracy"] for rows in runs]
    out: dict[str, Any] = {"name": name, "seeds": len(runs), "final_accuracy": final,
                           "total_seconds": [rows[-1]["elapsed"] for rows in runs]}
    for target in TARGETS:
        times = [time_to(rows, target) for rows in runs]
        out[f"seconds_to_{target:.3f}"] = times
    return out


def fmt(values: list[float | None], scale: float = 1.0, unit: str = "s", digits: int = 2) -> str:
    hit = [v * scale for v in values if v is not None]
    if not hit:
        return f"not reached (0/{len(values)} seeds)"
    spread = statistics.stdev(hit) if len(hit) > 1 else 0.0
    note = "" if len(hit) == len(values) else f"  (reached by {len(hit)}/{len(values)} seeds)"
    return f"{statistics.mean(hit):.{digits}f} ± {spread:.{digits}f} {unit}{note}"


def report(s: dict[str, Any]) -> None:
    print(f"{s['name']}  ({s['seeds']} seeds)")
    for target in TARGETS:
        times = s[f"seconds_to_{target:.3f}"]
        fastest = min((t for t in times if t is not None), default=None)
        best = f"  (fastest seed {fastest:.2f} s)" if fastest is not None else ""
        print(f"  time to >= {100 * target:.1f}%:  {fmt(times)}{best}")
    print(f"  final test accuracy:  {fmt(s['final_accuracy'], 100, '%')}  "
          f"[{', '.join(f'{100 * a:.2f}' for a in s['final_accuracy'])}]")
    print(f"  whole run (all epochs):  {fmt(s['total_seconds'])}  (fastest seed "
          f"{min(s['total_seconds']):.2f} s)")


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    flags = overrides(args)
    cfg = resolve(preset=args.preset, flags=flags)
    train, test, val = load_data(cfg, args.root, device, Console(quiet=True))
    data = (train, test, val)
    load = os.getloadavg()[0]
    print(f"# {args.preset} on {device.type} ({torch.get_num_threads()} threads, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}), torch "
          f"{torch.__version__}, load average {load:.1f} at start", flush=True)

    if not args.no_warmup:
        # a few full batches and one of the size the epoch ends with, so every shape the
        # timed runs meet (cuDNN autotuning, oneDNN kernels) has been seen once
        n = 4 * cfg.batch_size + len(train) % cfg.batch_size
        warm = (DeviceData(train.x[:n], train.y[:n]), test, None)
        run_preset(args.preset, {**flags, "epochs": 1}, 12345, warm)

    figures: dict[str, Any] = {"device": device.type, "threads": torch.get_num_threads(),
                               "torch": torch.__version__, "preset": args.preset,
                               "flags": flags, "load_average_start": load}
    runs = []
    for seed in range(args.seeds):
        rows = run_preset(args.preset, flags, seed, data)
        runs.append(rows)
        print(f"  seed {seed}: " + "  ".join(
            f"epoch {r['epoch']} {100 * r['test_accuracy']:.2f}% at {r['elapsed']:.2f}s"
            for r in rows), flush=True)
    figures["preset_runs"] = summarise(f"digitlab --preset {args.preset}", runs)
    report(figures["preset_runs"])

    if args.baseline:
        naive = []
        # the naive recipe keeps float tensors, as most tutorials do (materialised untimed)
        plain = (DeviceData(train.x[:], train.y), DeviceData(test.x[:], test.y))
        for seed in range(args.seeds):
            rows = run_naive(seed, *plain)
            naive.append(rows)
            print(f"  naive seed {seed}: {100 * rows[0]['test_accuracy']:.2f}% at "
                  f"{rows[0]['elapsed']:.2f}s", flush=True)
        figures["naive"] = summarise("naive recipe, same data", naive)
        report(figures["naive"])
        ours = [r for r in figures["preset_runs"]["seconds_to_0.990"] if r is not None]
        theirs = figures["naive"]["total_seconds"]
        if ours:
            print(f"  naive whole run / {args.preset} time to 99.0%: "
                  f"{statistics.mean(theirs) / statistics.mean(ours):.2f}x")

    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    figures["peak_rss_mb"] = rss_mb
    print(f"peak resident memory of this process: {rss_mb:.0f} MB")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    record.write(args.json, benchmark=f"time_to_accuracy_{args.preset}_{device.type}",
                 figures=figures, tables=[_table(figures)], device=device.type,
                 torch_threads=torch.get_num_threads())


def _summary_row(s: dict[str, Any]) -> list[str]:
    def cell(values: list[float | None], scale: float = 1.0, unit: str = " s") -> str:
        hit = [v * scale for v in values if v is not None]
        if not hit:
            return "not reached"
        spread = statistics.stdev(hit) if len(hit) > 1 else 0.0
        some = "" if len(hit) == len(values) else f" ({len(hit)} of {len(values)} seeds)"
        return f"{statistics.mean(hit):.2f} ± {spread:.2f}{unit}{some}"

    return [s["name"], str(s["seeds"]), cell(s["seconds_to_0.990"]),
            cell(s["seconds_to_0.995"]), cell(s["final_accuracy"], 100, "%"),
            cell(s["total_seconds"])]


def _table(figures: dict[str, Any]) -> dict[str, Any]:
    rows = [_summary_row(figures["preset_runs"])]
    if "naive" in figures:
        rows.append(_summary_row(figures["naive"]))
    return record.table(
        f"Time to 99.0% MNIST test accuracy on {figures['device']} ({figures['threads']} "
        f"threads), from model construction, evaluation included",
        ["recipe", "seeds", "time to ≥ 99.0%", "time to ≥ 99.5%", "final accuracy",
         "whole run"], rows)


if __name__ == "__main__":
    sys.exit(main())
