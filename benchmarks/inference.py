"""Inference speed: images per second at batch 1 and batch 1024, PyTorch against onnxruntime.

Each model is exported the way `digitlab export` does it (and checked the same way), then
both run the same normalised real MNIST test images on the CPU, PyTorch in the memory
layout digitlab's own inference uses (channels_last for convolutional models). Weights are
untrained (seed 0): speed does not depend on what the weights are. Each figure is the
median of --repeats timed runs of at least --seconds each; other work on the machine makes
the figures noisy, so run it on a quiet machine and say what else was running. On a busy
machine OpenMP's spinning threads slow PyTorch down many times over; OMP_WAIT_POLICY=PASSIVE
(which this script also applies to onnxruntime's threads) shows what the CPU can do.

    python benchmarks/inference.py
    OMP_WAIT_POLICY=PASSIVE python benchmarks/inference.py
    python benchmarks/inference.py --models mlp,lenet5 --seconds 2
    python benchmarks/inference.py --json benchmarks/results/inference.json
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import record  # noqa: E402

from digitlab.backends.torch import inference_layout  # noqa: E402
from digitlab.config import PRESETS  # noqa: E402
from digitlab.data import sources  # noqa: E402
from digitlab.data.loader import DeviceData, load_split  # noqa: E402
from digitlab.export import export_module  # noqa: E402
from digitlab.models.registry import create_model, list_models, model_args  # noqa: E402

BATCHES = (1, 1024)


def images_per_second(call: Callable[[], object], batch: int, seconds: float,
                      repeats: int) -> float:
    call()  # warm-up: first-call allocations and kernel selection
    rates = []
    for _ in range(repeats):
        count, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds:
            call()
            count += batch
        rates.append(count / elapsed)
    return statistics.median(rates)


def _session_options() -> ort.SessionOptions:
    """With OMP_WAIT_POLICY=PASSIVE (PyTorch's OpenMP threads sleep instead of spinning
    while they wait), onnxruntime's threads are told not to spin either, so both sides
    get the same treatment on a shared, busy CPU."""
    options = ort.SessionOptions()
    if os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def model_spec(name: str) -> tuple[str, dict]:
    """'mlp' is the tutorial's network; the others are the registry's defaults."""
    if name == "mlp":
        return "mlp (tutorial)", dict(PRESETS["tutorial"]["model_args"])
    return name, {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_models = [m for m in ("mlp", "lenet5", "cnn-fast", "cnn-best") if m in list_models()]
    parser.add_argument("--models", default=",".join(default_models))
    parser.add_argument("--seconds", type=float, default=1.0, help="per timed run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, metavar="FILE",
                        help="also write the result here (benchmarks/results/...)")
    args = parser.parse_args()

    root = sources.default_root()
    sources.fetch("mnist", root=root)
    test = DeviceData.from_split(load_split("mnist", root, "test"), torch.device("cpu"),
                                 "standard", limit=max(BATCHES))
    inputs = {b: test.x[:b].contiguous() for b in BATCHES}
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"onnxruntime {ort.__version__}; OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY', '(unset)')}; load average "
          f"{os.getloadavg()[0]:.1f}")
    header = "| model | parameters | batch | PyTorch img/s | onnxruntime img/s | ratio |"
    print(header)
    print("|" + "---|" * 6)
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            label, kwargs = model_spec(name)
            full = model_args(name, **kwargs)
            model = create_model(name, **full).eval()
            meta = {"model": name, "model_args": full, "normalize": "standard",
                    "dataset": "mnist", "classes": [str(i) for i in range(10)]}
            exported = export_module(model, meta, fmt="onnx", out=Path(tmp) / f"{name}.onnx",
                                     root=root, check_count=200)
            session = ort.InferenceSession(str(exported.path), _session_options(),
                                           providers=["CPUExecutionProvider"])
            params = sum(p.numel() for p in model.parameters())
            # PyTorch runs the model as the product does (backends.torch.TorchBackend).
            layout = inference_layout(model)
            model = model.to(memory_format=layout)
            for batch in BATCHES:
                x = inputs[batch].contiguous(memory_format=layout)
                x_np = inputs[batch].numpy()

                def torch_call(x: torch.Tensor = x, model: torch.nn.Module = model) -> object:
                    with torch.inference_mode():
                        return torch.softmax(model(x), dim=1)

                def ort_call(x_np: np.ndarray = x_np,
                             session: ort.InferenceSession = session) -> object:
                    return session.run(None, {"image": x_np})

                pt = images_per_second(torch_call, batch, args.seconds, args.repeats)
                ox = images_per_second(ort_call, batch, args.seconds, args.repeats)
                rows.append([label, f"{params:,}", batch, f"{pt:,.0f}", f"{ox:,.0f}",
                             f"{ox / pt:.2f}x"])
                print("| " + " | ".join(map(str, rows[-1])) + " |", flush=True)
    record.write(
        args.json, benchmark="inference",
        figures={"images_per_second": [
            {"model": r[0], "batch": r[2], "torch": float(r[3].replace(",", "")),
             "onnxruntime": float(r[4].replace(",", ""))} for r in rows]},
        tables=[record.table(
            f"Images per second on the CPU (median of {args.repeats} runs of "
            f"{args.seconds:g} s; untrained weights)",
            ["model", "parameters", "batch", "PyTorch img/s", "onnxruntime img/s",
             "onnxruntime / PyTorch"], rows)],
        torch_threads=torch.get_num_threads(),
        omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"))


if __name__ == "__main__":
    main()
