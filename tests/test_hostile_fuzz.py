"""The fuzz harness (tests/fuzz_targets.py) itself: a short run is clean and reaches every
oracle, and each oracle catches a bug planted in the code it watches."""

from __future__ import annotations

import io
import struct
import types
import warnings

import numpy as np
import pytest
from PIL import Image

import fuzz_targets
from conftest import require_native
from digitlab.vision import png


def fuzz(targets: list[str], iterations: int, tmp_path, seed: int = 3) -> tuple[int, str]:
    lines: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = fuzz_targets.run(targets, seed, 300, iterations, tmp_path, say=lines.append)
    return found, "\n".join(lines)


def test_a_short_run_is_clean_and_reaches_every_oracle(tmp_path):
    require_native()
    found, report = fuzz(["png", "decode", "native"], 600, tmp_path)
    assert found == 0, report
    for outcome in ("read, as Pillow", "declined", "decoded", "ImageError", "unfilter", "edt",
                    "resize", "to_mnist"):
        assert outcome in report, report
    assert not list(tmp_path.iterdir())


def test_the_same_seed_gives_the_same_inputs():
    one, two = (fuzz_targets.mutate(fuzz_targets.seeds(np.random.default_rng(5))[3],
                                    np.random.default_rng([5, k])) for k in (9, 9))
    assert one == two


def test_a_reader_that_gets_a_pixel_wrong_is_found(tmp_path, monkeypatch):
    read_grey = png.read_grey

    def off_by_one(data: bytes, **kw):
        image = read_grey(data, **kw)
        if image is not None and image.size > 4:
            image = image.copy()
            image.flat[image.size // 2] ^= 1
        return image

    monkeypatch.setattr(png, "read_grey", off_by_one)
    found, report = fuzz(["png"], 300, tmp_path)
    assert found > 0 and "differ from Pillow" in report, report
    assert list(tmp_path.glob("png-3-*.bin"))  # the input is kept to replay


def test_decode_raising_something_else_than_image_error_is_found(tmp_path, monkeypatch):
    decode = fuzz_targets.decode_image

    def leaky(data: bytes, **kw):
        image = decode(data, **kw)
        if image.shape[0] > 30:
            raise KeyError("a bug")
        return image

    monkeypatch.setattr(fuzz_targets, "decode_image", leaky)
    found, report = fuzz(["decode"], 300, tmp_path)
    assert found > 0 and "not an ImageError" in report, report


@pytest.mark.parametrize("entry", ["edt", "unfilter", "resize", "to_mnist", "accepts"])
def test_a_wrong_native_answer_is_found(tmp_path, monkeypatch, entry):
    require_native()
    real = fuzz_targets.flat
    fake = types.SimpleNamespace(**{name: getattr(real, name) for name in
                                    ("unfilter", "edt", "resize", "to_mnist")})
    if entry == "edt":
        def edt(mask, out):
            done = real.edt(mask, out)
            if done:
                out.flat[0] += 0.5
            return done
        fake.edt = edt
    elif entry == "unfilter":
        def unfilter(raw, out):
            if bytes(raw[:1]) != b"\x04":
                return real.unfilter(raw, out)
            out[...] = 0  # Paeth rows taken as zeros
            return True
        fake.unfilter = unfilter
    elif entry == "resize":
        def resize(src, dst):
            real.resize(src, dst)
            dst *= 1.01
        fake.resize = resize
    elif entry == "to_mnist":
        def to_mnist(grey, out):
            found = real.to_mnist(grey, out)
            out[...] = np.roll(out, 3, axis=1)  # the digit placed 3 px off
            return found
        fake.to_mnist = to_mnist
    else:  # an odd argument taken as if it were right
        def edt(mask, out):
            return True if out.dtype != np.float64 else real.edt(mask, out)
        fake.edt = edt
    monkeypatch.setattr(fuzz_targets, "flat", fake)
    found, report = fuzz(["native"], 200, tmp_path)
    assert found > 0, report


# A 65x33 grey PNG found by the fuzz (seed 0): every CRC right, its IDAT a zlib stream that
# libdeflate inflates to the expected length (its Adler-32 checks out) and zlib calls corrupt.
DEFLATE_ONLY = bytes.fromhex("780163f8402960a0d4800fa3264082703c1c46c30139338da687d1f4309a1e9043"
                             "60343d2087c6f0281f0054c6db5a")


def test_a_stream_only_libdeflate_inflates_is_read_as_its_checksum_vouches():
    """png.py reads it (the one leniency vision/png.py documents) where Pillow refuses it;
    the fuzz's oracle knows that kind of file and no other, and the pixels are the
    stream's own data, unfiltered."""
    data = (png.SIGNATURE
            + fuzz_targets._chunk(b"IHDR", struct.pack(">IIBBBBB", 65, 33, 8, 0, 0, 0, 0))
            + fuzz_targets._chunk(b"IDAT", DEFLATE_ONLY) + fuzz_targets._chunk(b"IEND", b""))
    with pytest.raises(OSError), Image.open(io.BytesIO(data)) as image:
        image.load()
    assert fuzz_targets._only_libdeflate_reads(data)
    assert fuzz_targets.check_png(data) == "read where only libdeflate inflates it"
    raw = png._libdeflate.zlib_decompress(DEFLATE_ONLY, 66 * 33)
    rows = np.frombuffer(raw, np.uint8).reshape(33, 66)
    got = png.read_grey(data, max_pixels=10**6)
    assert (rows[:, 0] == 0).all()  # no row filters: the pixels are the rows as they stand
    assert np.array_equal(got, rows[:, 1:])
    # A file Pillow refuses for another reason is still a finding.
    plain = fuzz_targets.grey_png(np.full((8, 8), 200, np.uint8), [0] * 8)
    assert not fuzz_targets._only_libdeflate_reads(plain)
