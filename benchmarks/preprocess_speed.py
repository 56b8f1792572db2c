"""Per-digit cost of reading a drawn digit: the compiled path against the Python steps.

MNIST test digits are drawn as the drawing page draws them (140x140, ink #111, the page's
PNG encoding; see serve_load.py), then each step is timed both ways on the same pictures
(CPU time, best of --repeats passes), and the outputs are compared: the compiled path's
to the Python steps' (the reference; how far apart, in grey levels), and the compiled
path's from 8-bit pixels to its answer for their float grey (the same, exactly):

    python benchmarks/preprocess_speed.py [--count 500] [--repeats 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import record  # noqa: E402
from serve_load import digit_pngs  # noqa: E402

from digitlab.vision import decode, preprocess  # noqa: E402


def best_ms(steps: list[tuple[Callable[[object], object], list]], repeats: int) -> list[float]:
    """Each step's best pass over its inputs, in CPU ms an item. The passes take turns (one
    of each step per round), so a neighbour's burst on the machine slows them all alike."""
    best = [float("inf")] * len(steps)
    for _ in range(repeats):
        for k, (step, inputs) in enumerate(steps):
            started = time.process_time()
            for item in inputs:
                step(item)
            best[k] = min(best[k], (time.process_time() - started) / len(inputs) * 1000)
    return best


def python_to_mnist(grey: np.ndarray) -> preprocess.Preprocessed:
    """to_mnist with the compiled path off: the NumPy/SciPy/Pillow steps alone."""
    compiled = preprocess.flat_to_mnist
    preprocess.flat_to_mnist = lambda grey: None  # type: ignore[assignment]
    try:
        return preprocess.to_mnist(grey)
    finally:
        preprocess.flat_to_mnist = compiled  # type: ignore[assignment]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--json", type=Path, default=None, metavar="FILE",
                        help="also write the result here (benchmarks/results/...)")
    args = parser.parse_args()
    if preprocess._flat is None:
        sys.exit("vision/_flat.c is not built here: nothing to compare (pip install -e . "
                 "with a C compiler)")
    bodies, _ = digit_pngs(140, style="page", count=args.count)
    greys = [decode.decode_image(body) for body in bodies]
    pixels = [decode.plain_pixels(body) for body in bodies]  # what serve hands over
    fast = [preprocess.to_mnist(g) for g in greys]
    slow = [python_to_mnist(g) for g in greys]
    eight_bit = [preprocess.to_mnist(p) for p in pixels]
    same = sum(a.blank == c.blank and a.bbox == c.bbox and np.array_equal(a.image, c.image)
               for a, c in zip(fast, eight_bit, strict=True))
    apart = [float(np.abs(a.image.astype(np.float64) - b.image).mean())
             for a, b in zip(fast, slow, strict=True)]
    verdicts = sum(a.blank == b.blank for a, b in zip(fast, slow, strict=True))
    taken = sum(preprocess.flat_to_mnist(g) is not None for g in greys)

    def pillow_decode(body: bytes) -> np.ndarray:
        return decode._to_grey(decode._open(body, "the image data", decode.MAX_PIXELS))

    names = ["to_mnist, Python steps", "to_mnist, compiled", "to_mnist, compiled, 8-bit",
             "PNG decode, Pillow", "PNG decode, vision/png.py"]
    times = best_ms([(python_to_mnist, greys), (preprocess.to_mnist, greys),
                     (preprocess.to_mnist, pixels), (pillow_decode, bodies),
                     (decode.decode_image, bodies)], args.repeats)
    rows = list(zip(names, times, strict=True))
    print(f"{len(greys)} MNIST test digits drawn as the page draws them (140x140 PNG); "
          f"CPU time, best of {args.repeats} passes, taking turns")
    for name, ms in rows:
        print(f"  {name:28s} {ms:7.3f} ms a digit")
    print(f"  to_mnist: {rows[0][1] / rows[1][1]:.1f}x quicker compiled, "
          f"{rows[0][1] / rows[2][1]:.1f}x from 8-bit pixels; PNG decode "
          f"{rows[3][1] / rows[4][1]:.1f}x")
    print(f"  compiled path taken for {taken}/{len(greys)}; compiled against the Python "
          f"steps: the same verdict for {verdicts}/{len(greys)}, inputs apart by "
          f"{np.mean(apart):.3f} grey levels on average (at most {max(apart):.3f}); compiled "
          f"from 8-bit pixels the same as from floats for {same}/{len(greys)}")
    if same != len(greys) or verdicts != len(greys):
        sys.exit("the compiled path disagrees")
    record.write(
        args.json, benchmark="preprocess_speed",
        figures={"digits": len(greys), "repeats": args.repeats, "same_verdict": verdicts,
                 "mean_difference": float(np.mean(apart)), "eight_bit_same": same,
                 "ms_per_digit": dict(zip(names, times, strict=True))},
        tables=[record.table(
            f"Reading one drawn digit (140x140 page PNG), CPU time, best of {args.repeats} "
            f"passes over {len(greys)} MNIST test digits", ["step", "CPU ms a digit"],
            [[name, f"{ms:.3f}"] for name, ms in rows])])


if __name__ == "__main__":
    main()
