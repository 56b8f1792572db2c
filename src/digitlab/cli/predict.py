"""`digitlab predict`: read digits (or whole numbers) from image files, directories, globs
and stdin, one line per image, carrying on past images that cannot be read."""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, BinaryIO

import typer

from digitlab.cli.options import Backend
from digitlab.errors import DigitlabError

# The model's code is imported when a command reads images, not when the app is built.
if TYPE_CHECKING:
    from digitlab.api import Recognizer
    from digitlab.results import Prediction

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
CHUNK = 64  # images preprocessed and classified together; output appears chunk by chunk
STDIN = "-"


@dataclass
class Item:
    """One thing to read: a file path, or stdin ('-'); error when it cannot even be listed."""

    path: str
    error: str | None = None


def expand_inputs(args: list[str]) -> list[Item]:
    """Files as given; a directory becomes the images directly inside it (sorted); a pattern
    with * ? or [ is globbed (for shells that did not, and for quoted patterns)."""
    items: list[Item] = []
    for arg in args:
        if arg == STDIN:
            items.append(Item(STDIN))
        elif os.path.isdir(arg):
            items.extend(_directory(arg))
        elif not os.path.exists(arg) and glob.has_magic(arg):
            matches = sorted(glob.glob(arg, recursive=True))
            if not matches:
                items.append(Item(arg, f"no files match {arg!r}"))
            for match in matches:
                items.extend(_directory(match) if os.path.isdir(match) else [Item(match)])
        else:
            items.append(Item(arg))  # a missing file is reported when it is read
    return items


def _directory(folder: str) -> list[Item]:
    found = sorted(
        os.path.join(folder, name) for name in os.listdir(folder)
        if name.lower().endswith(IMAGE_SUFFIXES) and os.path.isfile(os.path.join(folder, name))
    )
    if not found:
        return [Item(folder, f"no images ({', '.join(IMAGE_SUFFIXES)}) in directory '{folder}'")]
    return [Item(path) for path in found]


def predict_files(
    args: list[str],
    *,
    recognizer: Recognizer,
    top_k: int = 3,
    number: bool = False,
    stdin: BinaryIO | None = None,
) -> Iterator[Prediction]:
    """Predictions in input order, batched CHUNK images at a time."""
    from digitlab.results import failed

    items = expand_inputs(args)
    for start in range(0, len(items), CHUNK):
        chunk = items[start : start + CHUNK]
        sources: list[str | bytes] = []
        for item in chunk:
            sources.append(_read_stdin(stdin) if item.path == STDIN else item.path)
        readable = [(i, s) for i, (item, s) in enumerate(zip(chunk, sources, strict=True))
                    if item.error is None]
        answers = recognizer.predict_many([s for _, s in readable], top_k=top_k, number=number)
        by_index = dict(zip((i for i, _ in readable), answers, strict=True))
        for i, item in enumerate(chunk):
            if item.error is not None:
                yield failed(item.path, item.error, number=number)
                continue
            answer = by_index[i]
            answer.path = item.path
            if item.path == STDIN and answer.error:
                answer.error = answer.error.replace("the image data", "stdin", 1)
            yield answer


def _read_stdin(stdin: BinaryIO | None) -> bytes:
    """At most one byte past the decoder's limit: enough for it to refuse a longer stream
    without the rest being read."""
    from digitlab.vision.decode import MAX_BYTES

    if stdin is None:
        raise DigitlabError("'-' reads an image from stdin, but there is no stdin")
    return stdin.read(MAX_BYTES + 1)


def format_prediction(p: Prediction) -> str:
    """One human-readable line (errors are written by the caller to stderr)."""
    flag = "  [low confidence]" if p.low_confidence else ""
    if p.digits is not None:
        if p.blank:
            return f"{p.path}: no digits found"
        each = ", ".join(f"{d.digit} {100 * d.confidence:.1f}%"
                         + (" (low)" if d.low_confidence else "") for d in p.digits)
        return f"{p.path}: {p.number}  (digits: {each}){flag}"
    if p.blank or p.digit is None or p.confidence is None:
        return f"{p.path}: no digit found"
    ranked = ", ".join(f"{d} {100 * q:.1f}%" for d, q in p.top_k)
    return f"{p.path}: {p.digit}  ({100 * p.confidence:.1f}%)  top-{len(p.top_k)}: {ranked}{flag}"


class InputSaver:
    """--show-input: writes what the model saw as 28x28 PNGs named after each input."""

    def __init__(self, folder: Path) -> None:
        if folder.exists() and not folder.is_dir():
            raise DigitlabError(f"--show-input {folder} exists and is not a directory")
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.used: set[str] = set()

    def _name(self, path: str | None, suffix: str = "") -> Path:
        stem = "stdin" if path in (None, STDIN) else Path(path).stem or "image"
        name, n = f"{stem}{suffix}", 2
        while name in self.used:
            name, n = f"{stem}{suffix}-{n}", n + 1
        self.used.add(name)
        return self.folder / f"{name}.png"

    def save(self, p: Prediction) -> list[Path]:
        if p.error is not None:
            return []
        if p.digits:  # one file per digit of a number: each is what the model saw
            images = [(f"-{i}", d.model_input) for i, d in enumerate(p.digits)]
        elif p.model_input is not None:
            images = [("", p.model_input)]
        else:
            return []
        from digitlab.files import atomic_write
        from digitlab.results import png_bytes

        written = []
        for suffix, image in images:
            target = self._name(p.path, suffix)
            atomic_write(target, png_bytes(image))
            written.append(target)
        return written


def run_predict(
    args: list[str],
    *,
    run: Path | None = None,
    device: str = "cpu",
    backend: str | None = None,
    as_json: bool = False,
    top_k: int = 3,
    number: bool = False,
    show_input: Path | None = None,
    stdin: BinaryIO | None = None,
    out: Callable[[str], None],
    err: Callable[[str], None],
) -> int:
    """The whole command; returns how many inputs failed."""
    from digitlab.api import Recognizer

    if not 1 <= top_k <= 10:
        raise DigitlabError(f"--top-k must be between 1 and 10, got {top_k}")
    if sum(a == STDIN for a in args) > 1:
        raise DigitlabError("'-' (stdin) can be given only once")
    recognizer = Recognizer.load(run, device=device, backend=backend)
    saver = InputSaver(show_input) if show_input is not None else None
    failures = 0
    for p in predict_files(args, recognizer=recognizer, top_k=top_k, number=number,
                           stdin=stdin):
        if p.error is not None:
            failures += 1
            # Decoder messages already name the file; others get its name in front.
            name = "stdin" if p.path == STDIN else str(p.path)
            err(f"error: {p.error}" if name in p.error else f"error: {name}: {p.error}")
        if saver is not None:
            saver.save(p)
        if as_json:
            out(json.dumps(p.to_json()))
        elif p.error is None:
            out(format_prediction(p))
    if saver is not None and not as_json:
        err(f"model inputs saved in {show_input}")
    return failures


def predict(
    images: Annotated[list[str], typer.Argument(
        help="Image files, directories, globs, or - for one image on stdin.")],
    run: Annotated[Path | None, typer.Option(
        "--run", help="Run directory, weights file or exported .onnx (default: the model "
        "shipped with digitlab).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    top_k: Annotated[int, typer.Option("--top-k", help="How many ranked guesses to show.")] = 3,
    number: Annotated[bool, typer.Option(
        "--number", help="Read a whole number: segment the digits, left to right.")] = False,
    show_input: Annotated[Path | None, typer.Option(
        "--show-input", help="Save the 28x28 image the model saw for each input in this "
        "directory.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "cpu",
    backend: Annotated[Backend | None, typer.Option(
        help="torch, or onnxruntime for a file made by `digitlab export` (default: by the "
        "--run file; the shipped model runs on onnxruntime where installed).")] = None,
) -> None:
    """Read handwritten digits (or numbers) from photos, scans and drawings."""
    failures = run_predict(images, run=run, device=device, backend=backend, as_json=as_json,
                           top_k=top_k, number=number, show_input=show_input,
                           stdin=typer.get_binary_stream("stdin"), out=typer.echo,
                           err=lambda line: typer.echo(line, err=True))
    if failures:
        raise typer.Exit(1)
