"""Small files that ask for huge pictures cost little CPU and memory to read, through the
decoder alone (what the server calls) and through `digitlab predict`, each measured in a
process of its own."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from digitlab.vision.decode import TooLarge, decode_image, plain_pixels
from hostile_images import HOSTILE, bmp_rle8, write_all

MAX_CPU_S = 0.25
MAX_GROWTH = 100 * 2**20  # peak RSS over the RSS before reading the file
MAX_KEPT = 30 * 2**20  # RSS left over once the file has been answered

# Runs in a fresh interpreter: reads a small picture the same way first (imports, lazy set-up),
# then resets the peak RSS (VmHWM, through /proc/self/clear_refs) and reads the hostile one.
MEASURE = r"""
import json, resource, sys
from digitlab.api import Recognizer
from digitlab.errors import ImageError
from digitlab.cli.predict import predict_files

how, warm, path = sys.argv[1:]

def status():
    with open("/proc/self/status") as handle:
        fields = dict(line.split(":", 1) for line in handle)
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024

def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime

recognizer = Recognizer.load() if how == "predict" else None

def read(name):
    if how == "predict":
        (answer,) = predict_files([name], recognizer=recognizer)
        return answer.error or "read"
    try:
        Recognizer.prepare(name)
    except ImageError as err:
        return str(err)
    return "read"

read(warm)
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")
before, _ = status()
start = cpu()
outcome = read(path)
spent = cpu() - start
after, peak = status()
print(json.dumps({"cpu": spent, "growth": peak - before, "kept": after - before,
                  "outcome": outcome}))
"""


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("hostile")
    paths = write_all(folder)
    warm = Image.new("L", (60, 60), 255)
    ImageDraw.Draw(warm).line([(30, 10), (30, 50)], fill=0, width=5)
    warm.save(folder / "warm.png")
    paths["warm"] = folder / "warm.png"
    return paths


def measure(how: str, warm: Path, path: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", MEASURE, how, str(warm), str(path)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr
    return json.loads(done.stdout)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc")
@pytest.mark.timeout(300)
@pytest.mark.parametrize("how", ["prepare", "predict"])
@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_file_is_read_with_little_cpu_and_memory(hostile, how: str, name: str) -> None:
    found = measure(how, hostile["warm"], hostile[name])
    assert found["cpu"] <= MAX_CPU_S, found
    assert found["growth"] <= MAX_GROWTH, found
    assert found["kept"] <= MAX_KEPT, found


def test_huge_pictures_are_read_at_the_working_size() -> None:
    """What the preprocessing would shrink is shrunk by the decoder, to the same shape."""
    wide = Image.new("RGB", (4000, 1000), (255, 255, 255))
    ImageDraw.Draw(wide).rectangle([1900, 200, 2100, 800], fill=(0, 0, 0))
    for fmt in ("PNG", "JPEG", "MPO"):  # MPO: a camera's JPEG with its previews
        buffer = io.BytesIO()
        extra = {"save_all": True, "append_images": [wide]} if fmt == "MPO" else {}
        wide.save(buffer, format=fmt, **extra)
        grey = decode_image(buffer.getvalue())
        assert grey.shape == (400, 1600) and grey.dtype == np.float32
        assert grey[200, 800] < 0.1 and grey[200, 100] > 0.9


def test_corrupt_exif_is_read_without_a_warning() -> None:
    image = Image.new("L", (40, 30), 255)
    ImageDraw.Draw(image).rectangle([18, 5, 21, 25], fill=0)
    buffer = io.BytesIO()
    # an EXIF block announcing five tags and holding none: Pillow warns "Corrupt EXIF data"
    image.save(buffer, format="JPEG", exif=b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x05\x00")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        grey = decode_image(buffer.getvalue())
    assert grey.shape == (30, 40) and grey[15, 19] < 0.2 and grey[15, 30] > 0.8


def test_predict_prints_no_pillow_warning(tmp_path: Path) -> None:
    image = Image.new("L", (120, 120), 255)
    ImageDraw.Draw(image).line([(60, 20), (60, 100)], fill=0, width=10)
    path = tmp_path / "exif.jpg"
    image.save(path, format="JPEG", exif=b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x05\x00")
    done = subprocess.run([sys.executable, "-m", "digitlab", "predict", str(path)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout.startswith(f"{path}: 1")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF"])
def test_a_server_can_ask_for_a_lower_pixel_limit(fmt: str) -> None:
    buffer = io.BytesIO()
    Image.new("L", (300, 200), 255).save(buffer, format=fmt)
    data = buffer.getvalue()
    assert decode_image(data, max_pixels=300 * 200).shape == (200, 300)
    with pytest.raises(TooLarge, match="300x200 pixels, more than the 59,999 pixel limit"):
        decode_image(data, max_pixels=300 * 200 - 1)
    if fmt == "PNG":
        assert plain_pixels(data, max_pixels=300 * 200 - 1) is None


def test_run_length_bmps_are_read_up_to_their_limits() -> None:
    grey = decode_image(bmp_rle8(300))
    assert grey.shape == (300, 300)
    assert grey[0, 0] == 0.0 and grey[0, 15] == 1.0 and grey[-1, 29] == 1.0
    with pytest.raises(TooLarge, match="run-length compressed BMP of 6000x6000"):
        decode_image(bmp_rle8())


def test_what_would_take_too_much_memory_is_refused_from_its_header() -> None:
    with pytest.raises(TooLarge, match="6300x6300 pixels in mode RGBA: decoding it would take"):
        decode_image(HOSTILE["png_rgba_zeros.png"]())
