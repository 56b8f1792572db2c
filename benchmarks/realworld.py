"""How well does a model read digits photographed on paper? Naive resizing vs digitlab.

Builds a photo-like set from MNIST *test* digits with benchmarks/photolike.py (dark ink on
uneven paper, off-centre, 30-300 px tall, grain, shadow, blur, noise, JPEG) and strips of
3-6 digits, then prints:

- naive: what MNIST demos do: Pillow grey + resize to 28x28, no inversion, no centring
  (for numbers: the strip cut into as many equal slices as it has digits, each resized);
- digitlab: the JPEG bytes through Recognizer.predict_many, the path `digitlab predict`
  takes (decode, MNIST-style preprocessing, segmentation for numbers).

    python benchmarks/realworld.py                     # the model shipped in the package
    python benchmarks/realworld.py --run runs/robust --singles 2000 --numbers 2000
    python benchmarks/realworld.py --show-failures /tmp/failures   # photo + model input

A figure, not a test: nothing here is asserted.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

import photolike  # noqa: E402
import record  # noqa: E402

from digitlab.api import Recognizer  # noqa: E402
from digitlab.data import sources  # noqa: E402
from digitlab.data.loader import load_split  # noqa: E402
from digitlab.results import Prediction, png_bytes  # noqa: E402


def naive_input(jpeg: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(jpeg)) as image:
        return np.asarray(image.convert("L").resize((28, 28), Image.Resampling.BILINEAR))


def naive_number(jpeg: bytes, count: int) -> list[np.ndarray]:
    with Image.open(io.BytesIO(jpeg)) as image:
        grey = image.convert("L")
        edges = np.linspace(0, grey.width, count + 1).round().astype(int)
        return [np.asarray(grey.crop((int(a), 0, int(b), grey.height))
                           .resize((28, 28), Image.Resampling.BILINEAR))
                for a, b in zip(edges[:-1], edges[1:], strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=None, help="run dir (default: package model)")
    parser.add_argument("--singles", type=int, default=1000, help="photo-like single digits")
    parser.add_argument("--numbers", type=int, default=300, help="photo-like strips of 3-6")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--show-failures", type=Path, default=None,
                        help="write each failure's photo and model input(s) here")
    parser.add_argument("--json", type=Path, default=None,
                        help="also write the figures to this JSON file (what "
                        "`python -m digitlab.default_model --benchmark` stores)")
    parser.add_argument("--result", type=Path, default=None, metavar="FILE",
                        help="also write the benchmark result here (benchmarks/results/...)")
    args = parser.parse_args()
    # What decides the figures (not where failures or figures are written).
    figures: dict[str, object] = {"benchmark_command": " ".join([
        "python benchmarks/realworld.py", *([f"--run {args.run}"] if args.run else []),
        f"--singles {args.singles} --numbers {args.numbers} --seed {args.seed}"])}

    root = sources.default_root()
    sources.fetch("mnist", root=root)
    test = load_split("mnist", root, "test")
    recognizer = Recognizer.load(args.run)
    rng = np.random.default_rng(args.seed)
    info = recognizer.info()
    print(f"model: {info['model']} ({info['parameters']:,} parameters) from {info['source']}")

    probs = recognizer.classify(np.asarray(test.images))
    mnist_acc = float((probs.argmax(1) == test.labels).mean())
    print(f"MNIST test set (10,000, as stored):             {100 * mnist_acc:6.2f}%")
    figures["mnist_test_accuracy"] = mnist_acc

    # Single digits.
    failures = []
    if args.singles:
        index = rng.choice(len(test.labels), size=args.singles, replace=False)
        labels = test.labels[index].astype(int)
        jpegs = [photolike.photo_jpeg(test.images[i], rng) for i in index]
        naive = recognizer.classify(np.stack([naive_input(j) for j in jpegs])).argmax(1)
        started = time.perf_counter()
        answers = recognizer.predict_many(jpegs)
        seconds = time.perf_counter() - started
        ours = np.array([-1 if a.digit is None else a.digit for a in answers])
        print(f"photo-like single digits ({args.singles:,}): naive resize "
              f"{100 * (naive == labels).mean():6.2f}%   digitlab "
              f"{100 * (ours == labels).mean():6.2f}%   "
              f"({1000 * seconds / args.singles:.1f} ms/image)")
        figures.update(singles=args.singles, single_naive=float((naive == labels).mean()),
                       single_digitlab=float((ours == labels).mean()))
        failures = [(j, a, int(t)) for j, a, t, o in zip(jpegs, answers, labels, ours,
                                                         strict=True) if o != t]

    # Whole numbers, from their own random stream: the same strips whatever --singles is.
    rng = np.random.default_rng([args.seed, 1])
    # Whole numbers.
    exact_naive = exact_ours = digits_right = digits_total = 0
    number_failures = []
    number_seconds = 0.0
    for _ in range(args.numbers):
        count = int(rng.integers(3, 7))
        picks = rng.choice(len(test.labels), size=count, replace=False)
        truth = "".join(str(int(test.labels[i])) for i in picks)
        jpeg = photolike.to_jpeg(photolike.strip([test.images[i] for i in picks], rng),
                                 int(rng.integers(*photolike.QUALITY_RANGE)))
        guess = recognizer.classify(np.stack(naive_number(jpeg, count))).argmax(1)
        exact_naive += "".join(map(str, guess)) == truth
        started = time.perf_counter()
        answer = recognizer.predict_many([jpeg], number=True)[0]
        number_seconds += time.perf_counter() - started
        read = answer.number or ""
        exact_ours += read == truth
        if len(read) == count:
            digits_total += count
            digits_right += sum(a == b for a, b in zip(read, truth, strict=True))
        if read != truth:
            number_failures.append((jpeg, answer, truth))
    if args.numbers:
        print(f"photo-like numbers of 3-6 digits ({args.numbers:,}), read exactly: naive "
              f"{100 * exact_naive / args.numbers:6.2f}%   digitlab "
              f"{100 * exact_ours / args.numbers:6.2f}%   (digits right in numbers "
              f"segmented into the right count: {100 * digits_right / max(1, digits_total):.2f}%, "
              f"{1000 * number_seconds / args.numbers:.0f} ms/number)")
        too_few = sum(len(a.number or "") < len(t) for _, a, t in number_failures)
        too_many = sum(len(a.number or "") > len(t) for _, a, t in number_failures)
        wrong_count = too_few + too_many
        print(f"  number failures: {len(number_failures)}, of which {wrong_count} with the "
              f"wrong number of digits (segmentation: {too_few} too few, {too_many} too many)")
        figures.update(numbers=args.numbers, number_naive=exact_naive / args.numbers,
                       number_digitlab=exact_ours / args.numbers,
                       number_wrong_count=wrong_count, number_too_few=too_few,
                       number_too_many=too_many,
                       number_digit_accuracy=digits_right / max(1, digits_total))
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    record.write(args.result, benchmark="realworld", figures=figures,
                 tables=[_table(figures, info)])

    if args.show_failures is not None:
        _dump(args.show_failures, failures, number_failures)


def _table(figures: dict[str, object], info: dict[str, object]) -> dict[str, object]:
    def pct(key: str) -> str:
        value = figures.get(key)
        return "" if value is None else f"{100 * float(value):.2f}%"  # type: ignore[arg-type]

    rows = [["MNIST test set (10,000)", "", pct("mnist_test_accuracy")]]
    if "singles" in figures:
        rows.append([f"{figures['singles']:,} photo-like single digits", pct("single_naive"),
                     pct("single_digitlab")])
    if "numbers" in figures:
        rows.append([f"{figures['numbers']:,} photo-like numbers of 3-6 digits, read exactly",
                     pct("number_naive"), pct("number_digitlab")])
        rows.append(["digits of the numbers cut into the right count", "",
                     pct("number_digit_accuracy")])
    return record.table(f"Reading photographed digits: {info['model']} "
                        f"({info['parameters']:,} parameters)",
                        ["reading", "naive resize to 28x28", "digitlab"], rows)


def _dump(folder: Path, singles: list[tuple[bytes, Prediction, int]],
          numbers: list[tuple[bytes, Prediction, str]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k, (jpeg, answer, truth) in enumerate(singles):
        stem = f"single-{k:03d}-true{truth}-read{answer.digit}"
        (folder / f"{stem}.jpg").write_bytes(jpeg)
        if answer.model_input is not None:
            (folder / f"{stem}-input.png").write_bytes(png_bytes(answer.model_input))
    for k, (jpeg, answer, truth) in enumerate(numbers):
        stem = f"number-{k:03d}-true{truth}-read{answer.number}"
        (folder / f"{stem}.jpg").write_bytes(jpeg)
        if answer.model_input is not None:
            (folder / f"{stem}-input.png").write_bytes(png_bytes(answer.model_input))
    print(f"failures written to {folder}")


if __name__ == "__main__":
    main()
