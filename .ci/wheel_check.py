"""The built wheel, installed alone into clean venvs and used as a user would use it.

    python .ci/wheel_check.py dist      (what `make wheel-check` runs after `make dist`)

1. The wheel holds the shipped model, the drawing page and the compiled extension.
2. Core install (`pip install digitlab-*.whl`): no PyTorch is downloaded or installed,
   `digitlab predict` reads real MNIST test digits, drawn as photos, with the same answers
   as this full install, and a command whose extra is missing names it.
3. The core install again with every core dependency at its declared lower bound: the
   same digits read (the bounds in pyproject.toml are what is tested).
4. `digitlab-*.whl[serve]`: `digitlab serve` on 127.0.0.1 answers a drawn digit.

Packages come from the registry at the versions of constraints.txt (3: at the lower
bounds). One venv at a time,
under the system's temporary directory, removed when done. Run it with the full install's
Python (.venv): it writes the test images and gives the reference answers.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import venv
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DIGITS = 20  # the first MNIST test images
START_S = 120  # for the server to load its model and listen
INSTALL_S = 1200
# The venvs see only what is installed in them (PYTHONPATH=src would show them this
# checkout instead of the wheel).
CLEAN_ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


def fail(message: str) -> None:
    print(f"wheel-check: FAILED: {message}", file=sys.stderr)
    sys.exit(1)


def check_files(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    for needed in ("digitlab/assets/default-model.onnx", "digitlab/assets/default-model.json",
                   "digitlab/serve/static/index.html", "digitlab/vision/_flat."):
        if not any(n.startswith(needed) for n in names):
            fail(f"{wheel.name} has no {needed}")
    if not any(re.fullmatch(r"digitlab/vision/_flat\..*\.(so|pyd)", n) for n in names):
        fail(f"{wheel.name} has no compiled vision/_flat extension")


def write_digits(folder: Path) -> tuple[list[Path], list[int]]:
    """MNIST test digits as a phone photo of paper would show them: dark ink on light,
    uneven paper, four times the size."""
    from digitlab.data.idx import read_idx
    from digitlab.data.sources import default_root, fetch, get_spec, split_path

    root = default_root()
    fetch("mnist", root=root)
    spec = get_spec("mnist")
    images = read_idx(split_path(spec, root, "test_images"))[:DIGITS]
    labels = read_idx(split_path(spec, root, "test_labels"))[:DIGITS]
    paper = np.linspace(215, 245, 112)[None, :]
    paths = []
    for i, image in enumerate(images):
        big = np.kron(image, np.ones((4, 4))).astype(np.float64)
        photo = (paper - big * (paper - 30) / 255).clip(0, 255).astype(np.uint8)
        paths.append(folder / f"mnist-test-{i}.png")
        Image.fromarray(photo).save(paths[-1])
    return paths, [int(v) for v in labels]


def lower_bounds(wheel: Path) -> list[str]:
    """name==version for each core dependency's lower bound (name>=version) in the wheel."""
    name = next(n for n in zipfile.ZipFile(wheel).namelist()
                if n.endswith(".dist-info/METADATA"))
    metadata = zipfile.ZipFile(wheel).read(name).decode()
    pins = []
    for line in metadata.splitlines():
        found = re.fullmatch(r"Requires-Dist: ([A-Za-z0-9_.-]+)>=([^,;\s]+)(;.*)?", line)
        if found and "extra ==" not in (found.group(3) or ""):
            pins.append(f"{found.group(1)}=={found.group(2)}")
    if not pins:
        fail(f"no lower bounds in {wheel.name}'s metadata")
    return pins


@contextmanager
def clean_venv(folder: Path, wheel: Path, extra: str, pins: list[str] | None = None
               ) -> Iterator[Path]:
    """A venv with the wheel (and extra) installed at the constraints' versions, or at pins;
    PyTorch may not be among what it pulls in. Yields its bin directory; removed after."""
    venv.create(folder, with_pip=True, clear=True)
    constraints = folder.parent / "constraints.txt"
    # torch<0: any requirement of torch fails the install
    constraints.write_text("\n".join(["torch<0", *(pins or [])]) + "\n")
    pinned = [] if pins else ["-c", str(ROOT / "constraints.txt")]
    bin_dir = folder / "bin"
    try:
        subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "--quiet", *pinned,
                        "-c", str(constraints), f"{wheel}{extra}"],
                       check=True, timeout=INSTALL_S, env=CLEAN_ENV)
        yield bin_dir
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def predict(command: list[str], images: list[Path], *extra: str,
            env: dict[str, str] | None = None) -> list[dict]:
    done = subprocess.run([*command, "predict", "--json", *extra, *map(str, images)],
                          capture_output=True, text=True, timeout=300, cwd=images[0].parent,
                          env=env)
    if done.returncode != 0:
        fail(f"{' '.join(command)} predict: exit {done.returncode}\n{done.stderr}")
    return [json.loads(line) for line in done.stdout.splitlines()]


def megabytes(folder: Path) -> float:
    return sum(p.lstat().st_blocks * 512 for p in folder.rglob("*")) / 2**20  # as du


def check_core(bin_dir: Path, images: list[Path], labels: list[int],
               reference: list[dict], torch_answers: list[dict]) -> None:
    python = str(bin_dir / "python")
    probe = ("import importlib.util as u; "
             "print([m for m in ('torch', 'fastapi', 'matplotlib') if u.find_spec(m)])")
    found = subprocess.run([python, "-c", probe], capture_output=True, text=True, check=True,
                           env=CLEAN_ENV)
    if found.stdout.strip() != "[]":
        fail(f"the core install has {found.stdout.strip()}")
    answers = predict([str(bin_dir / "digitlab")], images, env=CLEAN_ENV)
    if answers != reference:
        fail(f"the core install answers differently:\n{answers}\nagainst\n{reference}")
    agree(answers, torch_answers, "onnxruntime and PyTorch")
    right = sum(a["digit"] == label for a, label in zip(answers, labels, strict=True))
    if right < 0.9 * len(labels):
        fail(f"only {right} of {len(labels)} MNIST test digits read right")
    print(f"core install: {right}/{len(labels)} MNIST test digits read as photos, the same "
          "answers as the full install")
    train = subprocess.run([str(bin_dir / "digitlab"), "train"], capture_output=True,
                           text=True, timeout=120, env=CLEAN_ENV)
    want = "Error: `digitlab train` needs PyTorch: pip install 'digitlab[train]'\n"
    if (train.returncode, train.stderr) != (1, want):
        fail(f"digitlab train without PyTorch: exit {train.returncode}, {train.stderr!r}")


def agree(answers: list[dict], others: list[dict], who: str) -> None:
    for one, other in zip(answers, others, strict=True):
        if one["digit"] != other["digit"] or abs(one["confidence"] - other["confidence"]) > 1e-4:
            fail(f"{who} disagree on {one['path']}: {one} against {other}")


def check_lower_bounds(bin_dir: Path, pins: list[str], images: list[Path],
                       reference: list[dict]) -> None:
    agree(predict([str(bin_dir / "digitlab")], images, env=CLEAN_ENV), reference,
          "the lower bounds and constraints.txt")
    print(f"lower bounds ({', '.join(pins)}): the same digits read")


def post(url: str, body: bytes, content_type: str) -> dict:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def drain(stream: IO[str] | None, into: queue.Queue[str | None]) -> None:
    for line in stream or []:
        into.put(line)
    into.put(None)


def check_serve(bin_dir: Path, image: Path, label: int) -> None:
    env = {**CLEAN_ENV, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen([str(bin_dir / "digitlab"), "serve", "--port", "0",
                               "--no-access-log"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=env)
    try:
        # A thread reads the output to its end: a silent server cannot block this check, nor
        # a full pipe the server.
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=drain, args=(server.stdout, lines), daemon=True).start()
        url, deadline, seen = None, time.monotonic() + START_S, []
        while url is None and (left := deadline - time.monotonic()) > 0:
            try:
                line = lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:  # the server ended
                break
            seen.append(line)
            found = re.search(r"digitlab serve: (http://127\.0\.0\.1:\d+/)", line)
            url = found.group(1) if found else None
        if url is None:
            fail("digitlab serve did not start:\n" + "".join(seen))
        with urllib.request.urlopen(url + "healthz", timeout=30) as response:
            if response.status != 200:
                fail(f"/healthz: {response.status}")
        data = image.read_bytes()
        raw = post(url + "api/predict", data, "image/png")
        boundary = "digitlab-wheel-check"
        form = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
                f"filename=\"{image.name}\"\r\nContent-Type: image/png\r\n\r\n").encode() \
            + data + f"\r\n--{boundary}--\r\n".encode()
        upload = post(url + "api/predict", form, f"multipart/form-data; boundary={boundary}")
        if raw["digit"] != label or upload["digit"] != label:
            fail(f"digitlab serve read {image.name} as {raw['digit']} and {upload['digit']}, "
                 f"not {label}")
        print(f"serve install: {url}api/predict read {image.name} as {label} (raw and form)")
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
            fail("digitlab serve was still running 60 s after Ctrl+C")


def main() -> None:
    dist = Path(sys.argv[1] if len(sys.argv) > 1 else "dist")
    wheels, sdists = sorted(dist.glob("digitlab-*.whl")), sorted(dist.glob("digitlab-*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        fail(f"{dist} should hold one wheel and one sdist: {wheels + sdists}")
    wheel = wheels[0].resolve()
    check_files(wheel)
    with tempfile.TemporaryDirectory(prefix="digitlab-wheel-check-") as tmp:
        work = Path(tmp)
        (work / "images").mkdir()
        images, labels = write_digits(work / "images")
        full = [sys.executable, "-m", "digitlab"]
        reference = predict(full, images)
        torch_answers = predict(full, images, "--backend", "torch")
        with clean_venv(work / "venv", wheel, "") as bin_dir:
            check_core(bin_dir, images, labels, reference, torch_answers)
            print(f"core install: venv of {megabytes(work / 'venv'):.0f} MiB")
        pins = lower_bounds(wheel)
        with clean_venv(work / "venv", wheel, "", pins) as bin_dir:
            check_lower_bounds(bin_dir, pins, images, reference)
        with clean_venv(work / "venv", wheel, "[serve]") as bin_dir:
            check_serve(bin_dir, images[0], labels[0])
            print(f"serve install: venv of {megabytes(work / 'venv'):.0f} MiB")
    print(f"wheel-check: passed ({wheel.name}, {sdists[0].name})")


if __name__ == "__main__":
    main()
