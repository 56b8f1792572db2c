"""`digitlab predict` and the Python API, with the model shipped in the package, on real MNIST
test digits drawn as dark ink on uneven paper."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from digitlab.api import Recognizer
from digitlab.cli import app
from digitlab.results import LOW_CONFIDENCE, Prediction
from digitlab.vision.decode import MAX_BYTES

runner = CliRunner()
BASE_KEYS = {"path", "digit", "confidence", "probabilities", "top_k", "low_confidence", "blank"}


def invoke(*args: object, input: bytes | None = None):
    return runner.invoke(app, [str(a) for a in args], input=input, catch_exceptions=False)


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def recognizer() -> Recognizer:
    return Recognizer.load()


@pytest.fixture(scope="module")
def mnist_probs(recognizer, mnist_test_split) -> np.ndarray:
    """The default model's probabilities for the first 3,000 real test digits."""
    return recognizer.classify(np.asarray(mnist_test_split.images[:3000]))


def paper(digit: np.ndarray, *, height: int, seed: int, size: tuple[int, int] = (220, 260)
          ) -> np.ndarray:
    """An MNIST digit (white on black) as dark ink on light, unevenly lit paper, off-centre.
    uint8 RGB [H, W, 3]."""
    rng = np.random.default_rng(seed)
    ink = Image.fromarray(digit).resize((height, height), Image.Resampling.BICUBIC)
    alpha = np.zeros(size, np.float32)
    top = int(rng.integers(0, size[0] - height))
    left = int(rng.integers(0, size[1] - height))
    alpha[top : top + height, left : left + height] = np.asarray(ink, np.float32) / 255
    yy, xx = np.mgrid[0 : size[0], 0 : size[1]] / max(size)
    light = 0.93 - 0.2 * (0.6 * xx + 0.4 * yy)
    grey = light * (1 - alpha) + 0.12 * alpha + rng.normal(0, 0.01, size)
    rgb = np.clip(grey[..., None] * np.array([1.0, 0.99, 0.96]), 0, 1)
    return np.round(rgb * 255).astype(np.uint8)


def encode(image: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def photos(mnist_test_split, tmp_path_factory) -> list[tuple[Path, int]]:
    """Six paper photos of real test digits, as PNG and JPEG files."""
    folder = tmp_path_factory.mktemp("photos")
    out = []
    for k, index in enumerate([0, 1, 2, 3, 4, 7]):
        image = paper(mnist_test_split.images[index], height=60 + 25 * k, seed=k)
        fmt = "JPEG" if k % 2 else "PNG"
        path = folder / f"digit{k}.{fmt.lower().replace('jpeg', 'jpg')}"
        path.write_bytes(encode(image, fmt))
        out.append((path, int(mnist_test_split.labels[index])))
    return out


def bad_files(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    good = encode(np.full((40, 40), 200, np.uint8))
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 1, 0, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    files = {
        "empty": b"",
        "truncated": good[: len(good) // 2],
        "text": b"hello, this is not an image\n",
        # A valid PNG header announcing 10^10 pixels: must be refused before decoding.
        "bomb": b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""),
        "tiny": encode(np.zeros((1, 1), np.uint8)),
    }
    paths = {}
    for name, data in files.items():
        paths[name] = folder / f"{name}.png"
        paths[name].write_bytes(data)
    return paths


# --- the model shipped in the package -----------------------------------------------------


@pytest.mark.slow
def test_default_model_ships_in_the_package_and_reads_mnist(recognizer, mnist_test_split,
                                                          mnist_probs):
    info = recognizer.info()
    assert info["source"] == "package default"
    assert info["parameters"] > 0 and info["dataset"] == "mnist"
    assert info["test_accuracy"] >= 0.99
    assert "make default-model" in info["command"]
    images, labels = mnist_test_split.images[:3000], mnist_test_split.labels[:3000]
    predicted = mnist_probs.argmax(1)
    assert (predicted == labels).mean() >= 0.99
    # Through predict_many (arrays that already are MNIST digits pass straight through).
    answers = recognizer.predict_many(list(images[:200]))
    assert [a.digit for a in answers] == predicted[:200].tolist()


@pytest.mark.slow
def test_convolutions_run_channels_last_with_the_same_answers(mnist_test_split):
    """NHWC is the layout oneDNN's CPU convolutions are fast in (2.5-3x per batch here);
    the answers are those of the model in its stored layout."""
    import torch

    from digitlab.data.loader import normalise

    on_torch = Recognizer.load(backend="torch")
    mnist_probs = on_torch.classify(np.asarray(mnist_test_split.images[:500]))
    backend = on_torch.backend
    assert backend.layout is torch.channels_last
    conv = next(m for m in backend.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    plain = copy_contiguous(backend.model)
    x = normalise(torch.from_numpy(np.array(mnist_test_split.images[:500])), backend.normalize)
    with torch.inference_mode():
        want = torch.softmax(plain(x), dim=1).numpy()
    np.testing.assert_allclose(mnist_probs[:500], want, atol=1e-5)
    assert (mnist_probs[:500].argmax(1) == want.argmax(1)).all()


def copy_contiguous(model):
    import copy

    import torch

    return copy.deepcopy(model).to(memory_format=torch.contiguous_format)


@pytest.mark.slow
def test_reads_digits_photographed_on_paper(recognizer, photos):
    answers = recognizer.predict_many([path for path, _ in photos])
    assert [a.digit for a in answers] == [label for _, label in photos]
    assert all(not a.blank and a.confidence > 0.5 for a in answers)


# --- the API: every input form gives the CLI's answer --------------------------------------


@pytest.mark.slow
def test_path_bytes_pil_numpy_and_cli_agree(recognizer, photos):
    for path, label in photos[:2]:  # a PNG and a JPEG
        data = path.read_bytes()
        with Image.open(path) as opened:
            pil = opened.copy()
        forms = [path, str(path), data, pil, np.asarray(pil)]
        answers = [recognizer.predict(form, top_k=4) for form in forms]
        for answer in answers:
            assert answer.digit == label
            np.testing.assert_allclose(answer.probabilities, answers[0].probabilities, atol=1e-6)
            assert np.array_equal(answer.model_input, answers[0].model_input)
        assert answers[0].path == str(path) and answers[2].path is None
        cli = json_lines(invoke("predict", path, "--json", "--top-k", 4).stdout)[0]
        assert cli["digit"] == label
        np.testing.assert_allclose(cli["probabilities"], answers[0].probabilities, atol=1e-6)
        assert cli == answers[0].to_json()


def test_prepare_decoded_takes_pixels_or_their_floats_alike(recognizer, photos,
                                                           mnist_test_split):
    """What serve hands over (a plain PNG's uint8 pixels) is read as its v / 255 floats:
    a drawing, a photo, a 28x28 MNIST digit and a whole number give the same inputs."""
    drawing = np.full((140, 140), 255, np.uint8)
    drawing[30:110, 66:74] = 17
    with Image.open(photos[0][0]) as opened:
        photo = np.asarray(opened.convert("L"))
    strip = np.concatenate([mnist_test_split.images[k] for k in range(3)], axis=1)
    cases = [(drawing, False), (photo, False), (mnist_test_split.images[0], False),
             (255 - strip, True)]
    for pixels, number in cases:
        a = Recognizer.prepare_decoded(pixels, number=number)
        b = Recognizer.prepare_decoded(pixels.astype(np.float32) / 255.0, number=number)
        assert len(a.inputs) == len(b.inputs) >= 1
        assert all(np.array_equal(x, y) for x, y in zip(a.inputs, b.inputs, strict=True))
        assert [p.to_json() for p in recognizer.finish([a, b], recognizer.classify_prepared(
            [a, b]))] == [recognizer.predict(pixels, number=number).to_json()] * 2


def test_top_k_ranks_most_probable_first_and_ties_in_class_order(recognizer, mnist_probs):
    """top_k is the classes by falling probability, equal ones in class order (what a
    stable argsort of -p gives), and low_confidence compares the float32 confidence."""
    ties = np.array([0.1, 0.3, 0.05, 0.3, 0.05, 0.0, 0.1, 0.0, 0.1, 0.0], np.float32)
    prepared = Recognizer.prepare_decoded(np.eye(28, dtype=np.uint8) * 255)
    for row in np.concatenate([ties[None], mnist_probs[:300]]):
        (answer,) = recognizer.finish([prepared], row[None], top_k=10)
        order = np.argsort(-row, kind="stable").tolist()
        assert [d for d, _ in answer.top_k] == order and answer.digit == order[0]
        assert [p for _, p in answer.top_k] == [float(row[d]) for d in order]
        assert answer.low_confidence == bool(row.max() < np.float32(LOW_CONFIDENCE))
    (tied,) = recognizer.finish([prepared], ties[None], top_k=4)
    assert [d for d, _ in tied.top_k] == [1, 3, 0, 6] and tied.low_confidence


def test_prepare_quickly_reads_what_the_compiled_path_takes_and_declines_the_rest(
        photos, mnist_test_split):
    """The quick way gives prepare_decoded's inputs for a drawing on flat paper (one that
    runs off the canvas too), a blank page and a 28x28 MNIST digit; None for a photo (its
    lighting analysis takes ms)."""
    from digitlab.vision import native

    drawing = np.full((140, 140), 255, np.uint8)
    drawing[30:110, 66:74] = 17
    with Image.open(photos[0][0]) as opened:
        photo = np.asarray(opened.convert("L"))
    blank = np.full((140, 140), 255, np.uint8)
    big = blank.copy()  # drawn off the canvas: the bar crosses both sides, the stem the bottom
    big[30:46, :] = big[30:, 60:76] = 17
    for pixels in (drawing, big, blank, mnist_test_split.images[0]):
        quick = Recognizer.prepare_quickly(pixels)
        if native.flat is None and pixels.shape != (28, 28):
            assert quick is None  # nothing is quick without the compiled part
            continue
        assert quick is not None and not quick.number
        full = Recognizer.prepare_decoded(pixels)
        assert len(quick.inputs) == len(full.inputs)
        assert all(np.array_equal(x, y) for x, y in zip(quick.inputs, full.inputs, strict=True))
    assert Recognizer.prepare_quickly(photo) is None


def test_api_raises_image_error_for_bad_input(recognizer, tmp_path):
    from digitlab.errors import ImageError

    files = bad_files(tmp_path)
    for path in files.values():
        with pytest.raises(ImageError):
            recognizer.predict(path)
    with pytest.raises(ImageError):
        recognizer.predict(np.zeros((5, 5, 7)))
    with pytest.raises(ImageError):
        recognizer.predict(b"")
    # predict_many keeps going and records each error.
    answers = recognizer.predict_many([files["text"], np.zeros((40, 40), np.uint8)])
    assert answers[0].error and "not" in answers[0].error and answers[0].digit is None
    assert answers[1].error is None and answers[1].blank


def test_include_input_is_the_28x28_png(recognizer, photos):
    answer = recognizer.predict(photos[0][0])
    data = answer.to_json(include_input=True)
    import base64

    with Image.open(io.BytesIO(base64.b64decode(data["input_png"]))) as png:
        assert png.size == (28, 28) and png.mode == "L"
        assert np.array_equal(np.asarray(png), answer.model_input)


# --- the CLI ------------------------------------------------------------------------------


@pytest.mark.slow
def test_json_schema(photos):
    result = invoke("predict", *(p for p, _ in photos[:2]), "--json", "--top-k", 3)
    assert result.exit_code == 0, result.output
    lines = json_lines(result.stdout)
    assert len(lines) == 2
    for line, (path, label) in zip(lines, photos, strict=False):
        assert set(line) == BASE_KEYS
        assert line["path"] == str(path) and line["digit"] == label
        assert len(line["probabilities"]) == 10
        assert sum(line["probabilities"]) == pytest.approx(1.0, abs=1e-4)
        assert line["confidence"] == max(line["probabilities"])
        assert [d for d, _ in line["top_k"]][0] == label and len(line["top_k"]) == 3
        assert [p for _, p in line["top_k"]] == sorted((p for _, p in line["top_k"]),
                                                       reverse=True)
        assert line["low_confidence"] is False and line["blank"] is False


@pytest.mark.slow
def test_human_output(photos):
    path, label = photos[0]
    result = invoke("predict", path, "--top-k", 2)
    assert result.exit_code == 0
    line = result.stdout.strip()
    assert line.startswith(f"{path}: {label}  (") and "top-2: " in line


def test_every_bad_input_is_one_error_line_and_the_rest_still_run(tmp_path, photos):
    files = bad_files(tmp_path / "bad")
    good = photos[0][0]
    args = [files["empty"], good, files["truncated"], files["text"], files["bomb"],
            files["tiny"], tmp_path / "missing.png"]
    result = invoke("predict", *args)
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 6
    expected = {"empty": "empty", "truncated": "truncated", "text": "supported image",
                "bomb": "pixel", "tiny": "1x1", "missing": "no such"}
    for line, (name, fragment) in zip(errors, expected.items(), strict=True):
        assert line.startswith("error: ") and name in line and fragment in line, line
    assert result.stdout.strip().startswith(f"{good}: {photos[0][1]}")

    as_json = json_lines(invoke("predict", *args, "--json").stdout)
    assert [("error" in line) for line in as_json] == [True, False, True, True, True, True,
                                                       True]
    assert all(set(line) == BASE_KEYS | {"error"} for line in as_json if "error" in line)


def test_stdin(photos):
    path, label = photos[1]
    result = invoke("predict", "-", "--json", input=path.read_bytes())
    assert result.exit_code == 0, result.output
    (line,) = json_lines(result.stdout)
    assert line["path"] == "-" and line["digit"] == label
    empty = invoke("predict", "-", input=b"")
    assert empty.exit_code == 1 and "stdin is empty" in empty.stderr


def test_directories_and_globs(tmp_path, photos):
    folder = tmp_path / "dir"
    folder.mkdir()
    for path, _ in photos[:3]:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "notes.txt").write_text("not an image")
    result = invoke("predict", folder, "--json")
    assert result.exit_code == 0, result.output
    read = [(Path(line["path"]).name, line["digit"]) for line in json_lines(result.stdout)]
    assert read == sorted((p.name, label) for p, label in photos[:3])

    pattern = str(folder / "*.png")
    globbed = json_lines(invoke("predict", pattern, "--json").stdout)
    assert [Path(line["path"]).suffix for line in globbed] == [".png"] * len(globbed)
    assert len(globbed) == sum(p.suffix == ".png" for p, _ in photos[:3])

    (tmp_path / "empty").mkdir()
    nothing = invoke("predict", tmp_path / "empty", str(tmp_path / "*.webp"))
    assert nothing.exit_code == 1
    assert "no images" in nothing.stderr and "no files match" in nothing.stderr


def test_show_input_writes_what_the_model_saw(tmp_path, photos, recognizer):
    shown = tmp_path / "shown"
    blank = tmp_path / "blank.png"
    blank.write_bytes(encode(np.full((50, 50, 3), 230, np.uint8)))
    result = invoke("predict", photos[0][0], photos[2][0], blank, "--show-input", shown)
    assert result.exit_code == 0, result.output
    assert f"{blank}: no digit found" in result.stdout
    names = sorted(p.name for p in shown.iterdir())
    assert names == sorted([photos[0][0].stem + ".png", photos[2][0].stem + ".png",
                            "blank.png"])
    for path in (photos[0][0], photos[2][0]):
        with Image.open(shown / f"{path.stem}.png") as png:
            assert png.size == (28, 28) and png.mode == "L"
            assert np.array_equal(np.asarray(png), recognizer.predict(path).model_input)


@pytest.mark.slow
def test_number_from_a_strip_of_real_mnist_digits(tmp_path, mnist_test_split):
    picks = [3, 2, 1, 18, 4]  # test digits 0, 1, 2, 3, 4
    truth = "".join(str(int(mnist_test_split.labels[i])) for i in picks)
    gap = np.zeros((28, 8), np.uint8)
    row = np.concatenate([part for i in picks for part in (mnist_test_split.images[i], gap)],
                         axis=1)
    strip = np.pad(row, 12)
    inverted = 255 - np.kron(strip, np.ones((3, 3), np.uint8))  # dark ink on white, 3x size
    path = tmp_path / "number.png"
    path.write_bytes(encode(inverted))
    shown = tmp_path / "shown"
    result = invoke("predict", path, "--number", "--json", "--show-input", shown)
    assert result.exit_code == 0, result.output
    (line,) = json_lines(result.stdout)
    assert set(line) == BASE_KEYS | {"number", "digits"}
    assert line["number"] == truth
    assert [d["digit"] for d in line["digits"]] == [int(c) for c in truth]
    assert all(len(d["probabilities"]) == 10 for d in line["digits"])
    assert line["confidence"] == pytest.approx(np.prod([d["confidence"]
                                                        for d in line["digits"]]), rel=1e-4)
    assert sorted(p.name for p in shown.iterdir()) == [f"number-{i}.png" for i in range(5)]
    human = invoke("predict", path, "--number").stdout
    assert human.startswith(f"{path}: {truth}  (digits: ")


def test_low_confidence_is_flagged(mnist_probs, mnist_test_split, tmp_path):
    unsure = np.flatnonzero(mnist_probs.max(1) < LOW_CONFIDENCE)
    assert unsure.size > 0  # any real model is unsure about a few of 3,000 test digits
    path = tmp_path / "unsure.png"
    path.write_bytes(encode(mnist_test_split.images[unsure[0]]))
    (line,) = json_lines(invoke("predict", path, "--json").stdout)
    assert line["low_confidence"] is True and line["confidence"] < LOW_CONFIDENCE
    assert "[low confidence]" in invoke("predict", path).stdout


def test_prediction_json_of_a_failure():
    failed = Prediction("x.png", None, None, None, [], False, False, error="boom")
    assert failed.to_json() == {"path": "x.png", "digit": None, "confidence": None,
                                "probabilities": None, "top_k": [], "low_confidence": False,
                                "blank": False, "error": "boom"}


def test_option_errors_are_clean(tmp_path, photos):
    for args, fragment in ((["--top-k", "0"], "--top-k"),
                           (["--run", tmp_path / "nowhere"], "no such run directory"),
                           (["-", "-"], "only once")):
        result = invoke("predict", photos[0][0], *args)
        assert result.exit_code == 1 and fragment in result.stderr
        assert "Traceback" not in result.output



# `digitlab predict` that writes its own peak RSS (VmHWM) to the file named first on exit
# (the CLI runs atexit handlers on its way out). A child's ru_maxrss would not do: it counts
# the parent's memory, which the child shares until it runs the interpreter.
PEAK_THEN_PREDICT = """
import atexit, sys
peak_file = sys.argv.pop(1)
def peak():
    with open("/proc/self/status") as status, open(peak_file, "w") as out:
        out.write(next(line for line in status if line.startswith("VmHWM")).split()[1])
atexit.register(peak)
sys.argv[0] = "digitlab"
from digitlab.cli import main
main()
"""


def run_process(args: list[object], *, feed: bytes = b"", repeat: int = 0,
                timeout: float = 120) -> tuple[int, str, str, int]:
    """`digitlab predict ARGS` in a process of its own, its stdin fed `feed` `repeat` times
    for as long as it reads: exit code, stdout, stderr and its peak RSS in bytes. A run
    past `timeout` is killed and fails the test."""
    with tempfile.TemporaryDirectory() as folder:
        peak_file = Path(folder) / "peak"
        reading, writing = os.pipe()  # its stdin, written here while communicate reads
        child = subprocess.Popen(
            [sys.executable, "-c", PEAK_THEN_PREDICT, str(peak_file), "predict",
             *map(str, args)],
            stdin=reading, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        os.close(reading)

        def write() -> None:
            with open(writing, "wb", buffering=0) as stdin:
                try:
                    for _ in range(repeat):
                        stdin.write(feed)
                except BrokenPipeError:
                    pass  # it stopped reading, as a bounded read does

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        try:
            stdout, stderr = child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            pytest.fail(f"digitlab predict {args} did not end within {timeout} s")
        return (child.returncode, stdout.decode(), stderr.decode(),
                int(peak_file.read_text()) * 1024)


@pytest.mark.timeout(300)
def test_a_fifo_is_refused_and_the_other_files_answered(tmp_path, photos):
    fifo = tmp_path / "waiting.png"
    os.mkfifo(fifo)
    good, label = photos[0]
    code, out, err, _ = run_process([fifo, good])
    assert code == 1
    assert err.strip().splitlines() == [f"error: '{fifo}' is not a regular file "
                                        "(a pipe, device or socket)"]
    assert out.startswith(f"{good}: {label}")


@pytest.mark.timeout(300)
def test_stdin_past_the_limit_is_refused_without_reading_it_all(photos):
    good, _ = photos[0]
    _, _, _, baseline = run_process([good])
    chunk = bytes(2**20)
    code, out, err, peak = run_process(["-"], feed=chunk, repeat=4 * MAX_BYTES // len(chunk))
    assert code == 1 and out == ""
    assert err.strip() == f"error: stdin is larger than the {MAX_BYTES / 2**20:g} MiB limit"
    # one byte past the limit is read, never the whole stream
    assert peak - baseline < 2 * MAX_BYTES, (peak, baseline)
