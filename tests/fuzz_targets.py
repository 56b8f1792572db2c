"""Seeded mutation fuzzing of the image readers and the compiled entry points.

    python tests/fuzz_targets.py --seconds 60            # all targets, a minute
    python tests/fuzz_targets.py --seconds 600 --seed 7  # `make fuzz`
    python tests/fuzz_targets.py --target png --iterations 2000

Targets, each with an oracle that can tell a wrong answer from a right one:
  png      vision/png.read_grey on mutated PNGs (bit flips, truncation, header fields and
           chunk bodies changed with their CRC fixed, filter bytes recompressed...): it never
           raises, and whatever it accepts Pillow decodes to the same pixels;
  decode   vision/decode.decode_image on the same mutants and on mutated GIF, BMP, JPEG,
           TIFF and WebP files: an image or an ImageError, nothing else, in bounded time;
  native   the entry points of vision/_flat.c (unfilter, edt, resize, to_mnist) on random
           shapes and values, against their NumPy/SciPy/Pillow counterparts (exactly where
           the answer is exact: pixels, distances; within a tolerance where it is computed:
           resampling, to_mnist against the Python steps), and odd arguments (dtypes,
           strides, dimensions, read-only outputs) that must be refused.

Run under the sanitizer build (`make sanitize` / `make fuzz`) a memory error ends the
process with AddressSanitizer's report. Each finding is printed with the seed and iteration
that make it again, and the input is written under --out; the exit code is 1 if any.
A run is the same for the same --seed and --iterations (time only decides where it stops).
"""

from __future__ import annotations

import argparse
import io
import struct
import sys
import time
import traceback
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from digitlab.errors import ImageError
from digitlab.vision import png, preprocess
from digitlab.vision.decode import decode_image
from digitlab.vision.native import flat

SLOW_S = 20.0  # one call slower than this (under the sanitizer) counts as a hang
MAX_PIXELS = 4_000_000  # keeps each decode small, so a minute tries many inputs
# to_mnist's compiled answer against the Python steps' for one picture, in grey levels
# (see difference); tests/test_flat_native.py holds whole corpora to tighter rules.
FAR_DIFFERENCE = 2.0


class Finding(Exception):
    """A wrong answer, an unexpected exception or a hang."""


# --- PNG seeds and mutations ---------------------------------------------------------------


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(
        ">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else (b if pb <= pc else c)


def filter_rows(image: np.ndarray, filters: list[int]) -> bytes:
    """The PNG filter of each row (types 0-4 of the specification; 8-bit grey)."""
    out = bytearray()
    prev = np.zeros(image.shape[1], np.int32)
    for row, kind in zip(image.astype(np.int32), filters, strict=True):
        left = np.concatenate([[0], row[:-1]])
        up_left = np.concatenate([[0], prev[:-1]])
        if kind == 0:
            pred = np.zeros_like(row)
        elif kind == 1:
            pred = left
        elif kind == 2:
            pred = prev
        elif kind == 3:
            pred = (left + prev) // 2
        else:
            pred = np.array([_paeth(int(a), int(b), int(c))
                             for a, b, c in zip(left, prev, up_left, strict=True)], np.int32)
        out.append(kind)
        out += ((row - pred) % 256).astype(np.uint8).tobytes()
        prev = row
    return bytes(out)


def grey_png(image: np.ndarray, filters: list[int], level: int = 6, splits: int = 1) -> bytes:
    """A plain 8-bit grey PNG of `image` with the given row filters, IDAT split `splits` ways."""
    h, w = image.shape
    data = zlib.compress(filter_rows(image, filters), level)
    step = max(1, -(-len(data) // splits))
    idats = b"".join(_chunk(b"IDAT", data[k:k + step]) for k in range(0, len(data), step))
    return (png.SIGNATURE + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + idats + _chunk(b"IEND", b""))


def _pillow(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def drawing(rng: np.random.Generator, h: int, w: int) -> Image.Image:
    image = Image.new("L", (w, h), int(rng.integers(180, 256)))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(0, 4))):
        points = [(int(rng.integers(0, w)), int(rng.integers(0, h))) for _ in range(3)]
        draw.line(points, fill=int(rng.integers(0, 80)), width=int(rng.integers(1, 6)))
    return image


def seeds(rng: np.random.Generator) -> list[bytes]:
    """Valid files to start from: plain grey PNGs with every filter, and Pillow's PNG, GIF,
    BMP, JPEG, TIFF and WebP of small drawings in several modes."""
    out = []
    for h, w in [(1, 1), (1, 40), (40, 1), (5, 7), (28, 28), (33, 65), (140, 140)]:
        image = np.asarray(drawing(rng, h, w))
        noisy = rng.integers(0, 256, (h, w), dtype=np.uint8)
        for pixels in (image, noisy):
            out.append(grey_png(pixels, [int(f) for f in rng.integers(0, 5, h)],
                                level=int(rng.integers(0, 10)), splits=int(rng.integers(1, 4))))
        out.append(png.write_grey(image))
    base = drawing(rng, 48, 36)
    for mode in ("L", "LA", "RGB", "RGBA", "P", "1", "I;16"):
        out.append(_pillow(base.convert(mode), "PNG"))
    out.append(_pillow(base, "PNG", optimize=True))
    out.append(_pillow(base.convert("RGB"), "PNG", transparency=(255, 255, 255)))
    for fmt, mode in (("GIF", "P"), ("BMP", "L"), ("BMP", "RGB"), ("JPEG", "L"),
                      ("JPEG", "RGB"), ("TIFF", "L"), ("TIFF", "RGBA"), ("WEBP", "RGB")):
        try:
            out.append(_pillow(base.convert(mode), fmt))
        except (OSError, KeyError):  # a format this Pillow was built without
            continue
    return out


def _chunks(data: bytes) -> list[tuple[int, int]]:
    """(offset, length) of each chunk of a PNG, as far as its lengths are sane."""
    found, at = [], len(png.SIGNATURE)
    while at + 12 <= len(data) and len(found) < 64:
        length = struct.unpack_from(">I", data, at)[0]
        if at + 12 + length > len(data):
            break
        found.append((at, length))
        at += 12 + length
    return found


def _fix_crc(data: bytearray, at: int, length: int) -> None:
    kind_body = bytes(data[at + 4:at + 8 + length])
    data[at + 8 + length:at + 12 + length] = struct.pack(">I", zlib.crc32(kind_body) & 0xFFFFFFFF)


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One to three random changes; PNG-aware ones keep every CRC right, so the reader goes
    past its checksums into the header, inflating and unfiltering."""
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 4))):
        chunks = _chunks(bytes(out)) if out.startswith(png.SIGNATURE) else []
        how = int(rng.integers(0, 11 if chunks else 5))
        if not out:
            out += rng.integers(0, 256, 8, dtype=np.uint8).tobytes()
        k = int(rng.integers(0, len(out)))
        if how == 0:
            out[k] ^= 1 << int(rng.integers(0, 8))
        elif how == 1:
            del out[int(rng.integers(0, len(out) + 1)):]
        elif how == 2:
            out[k:k] = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
        elif how == 3:
            out[k] = int(rng.choice([0, 1, 0x7F, 0x80, 0xFF]))
        elif how == 4:
            out += rng.integers(0, 256, int(rng.integers(1, 256)), dtype=np.uint8).tobytes()
        else:
            _mutate_chunk(out, chunks, how, rng)
    return bytes(out)


IHDR_VALUES = [0, 1, 2, 3, 4, 6, 7, 8, 16, 255, 2**31 - 1, 2**31, 2**32 - 1, 6325, 40_000_001]


def _mutate_chunk(out: bytearray, chunks: list[tuple[int, int]], how: int,
                  rng: np.random.Generator) -> None:
    at, length = chunks[int(rng.integers(0, len(chunks)))]
    kind = bytes(out[at + 4:at + 8])
    if how == 5 and kind == b"IHDR" and length == 13:  # a header field, CRC fixed
        field = int(rng.integers(0, 7))
        value = int(rng.choice(IHDR_VALUES))
        if field < 2:
            out[at + 8 + 4 * field:at + 12 + 4 * field] = struct.pack(">I", value & 0xFFFFFFFF)
        else:
            out[at + 8 + 6 + field] = value & 0xFF
        _fix_crc(out, at, length)
    elif how == 6 and length:  # a byte of a chunk's body, CRC fixed
        out[at + 8 + int(rng.integers(0, length))] ^= 1 << int(rng.integers(0, 8))
        _fix_crc(out, at, length)
    elif how == 7:  # drop a chunk
        del out[at:at + 12 + length]
    elif how == 8:  # repeat a chunk
        out[at:at] = out[at:at + 12 + length]
    elif how == 9 and kind == b"IDAT":  # change the filter bytes, recompress, fix the CRC
        raw = _inflated(bytes(out[at + 8:at + 8 + length]))
        if raw:
            raw = bytearray(raw)
            for _ in range(int(rng.integers(1, 4))):
                raw[int(rng.integers(0, len(raw)))] = int(rng.choice([0, 1, 2, 3, 4, 5, 255]))
            body = zlib.compress(bytes(raw) + bytes(int(rng.integers(0, 2))))
            out[at:at + 12 + length] = _chunk(b"IDAT", body)
    elif how == 10:  # an ancillary chunk or a huge declared length
        if rng.random() < 0.5:
            out[at:at] = _chunk(b"tEXt", b"k\x00" + bytes(int(rng.integers(0, 40))))
        else:
            out[at:at + 4] = struct.pack(">I", int(rng.choice([2**31 - 1, 2**32 - 1, 1 << 24])))


def _only_libdeflate_reads(data: bytes) -> bool:
    """Whether the file's image data is a stream zlib refuses and libdeflate reads whole,
    its Adler-32 checked: the one kind of file png.read_grey reads and Pillow does not
    (vision/png.py says why)."""
    body = b"".join(data[at + 8:at + 8 + n] for at, n in _chunks(data)
                    if data[at + 4:at + 8] == b"IDAT")
    if png._libdeflate is None or _inflated(body) is not None:
        return False
    try:
        png._libdeflate.zlib_decompress(body, 1 << 22)
    except png._libdeflate.DeflateError:
        return False
    return True


def _inflated(body: bytes) -> bytes | None:
    try:
        return zlib.decompressobj().decompress(body, 1 << 22)
    except zlib.error:
        return None


# --- oracles -------------------------------------------------------------------------------


def check_png(data: bytes) -> str:
    try:
        got = png.read_grey(data, max_pixels=MAX_PIXELS)
    except Exception as err:
        raise Finding(f"read_grey raised {err!r}") from err
    if got is None:
        return "declined"
    try:
        with Image.open(io.BytesIO(data)) as image:
            mode = image.mode
            want = np.asarray(image)
    except Exception as err:
        if _only_libdeflate_reads(data):
            return "read where only libdeflate inflates it"
        raise Finding(f"read_grey accepted a file Pillow refuses ({err!r})") from err
    if mode != "L" or want.shape != got.shape or not np.array_equal(want, got):
        raise Finding(f"read_grey's pixels differ from Pillow's ({mode} {want.shape})")
    return "read, as Pillow"


def check_decode(data: bytes) -> str:
    try:
        got = decode_image(data, max_pixels=MAX_PIXELS)
    except ImageError:
        return "ImageError"
    except Exception as err:
        raise Finding(f"decode_image raised {err!r}, not an ImageError") from err
    if not (isinstance(got, np.ndarray) and got.ndim == 2 and got.dtype == np.float32):
        raise Finding(f"decode_image returned {type(got).__name__} "
                      f"{getattr(got, 'dtype', '')} {getattr(got, 'shape', '')}")
    if got.size and not (np.isfinite(got).all() and got.min() >= 0 and got.max() <= 1):
        raise Finding("decode_image returned values outside [0, 1]")
    return "decoded"


ODD = "odd argument"


def refused(what: str, call: Callable[[], object]) -> None:
    """An odd argument must be refused with TypeError/ValueError, or declined (False/None)."""
    try:
        result = call()
    except (TypeError, ValueError, BufferError):
        return
    if result not in (False, None):
        raise Finding(f"{ODD} accepted by {what}: returned {result!r}")


def strided(a: np.ndarray) -> list[np.ndarray]:
    """`a`'s values in a view that is not C-contiguous; none where every such view of that
    shape still is (NumPy ignores the strides of sides of length 1)."""
    view = np.repeat(a, 2, axis=-1)[..., ::2]
    return [] if view.flags.c_contiguous else [view]


def describe(a: object) -> str:
    if isinstance(a, np.ndarray):
        return f"{a.dtype}{list(a.shape)}{'' if a.flags.c_contiguous else ' strided'}" \
               f"{'' if a.flags.writeable else ' read-only'}"
    return type(a).__name__


def check_unfilter(rng: np.random.Generator) -> None:
    h, w = int(rng.integers(1, 40)), int(rng.integers(1, 40))
    if rng.random() < 0.05:
        h, w = (1, int(rng.integers(1, 20000))) if rng.random() < 0.5 else (int(
            rng.integers(1, 5000)), 1)
    image = rng.integers(0, 256, (h, w), dtype=np.uint8)
    filters = [int(f) for f in rng.integers(0, 5, h)]
    raw = bytearray(filter_rows(image, filters))
    bad = rng.random() < 0.2
    if bad:
        raw[(w + 1) * int(rng.integers(0, h))] = int(rng.choice([5, 6, 128, 255]))
    out = np.empty((h, w), np.uint8)
    if rng.random() < 0.1:  # a length one off either way
        raw = raw[:-1] if rng.random() < 0.5 else raw + b"\x00"
        bad = True
    ok = flat.unfilter(bytes(raw), out)
    if ok != (not bad) or (ok and not np.array_equal(out, image)):
        raise Finding(f"unfilter {h}x{w} filters {sorted(set(filters))} bad={bad}: {ok}")
    readonly = np.empty((h, w), np.uint8)
    readonly.flags.writeable = False
    odd = [np.empty((h, w), np.uint16), np.empty((h, w, 1), np.uint8), np.empty(h * w, np.uint8),
           *strided(out), readonly, [[0] * w] * h]
    for arg in odd:
        refused(f"unfilter(raw, {describe(arg)})",
                lambda arg=arg: flat.unfilter(bytes(raw), arg))
    refused("unfilter(str, out)", lambda: flat.unfilter("text", out))


def check_edt(rng: np.random.Generator) -> None:
    h, w = int(rng.integers(1, 60)), int(rng.integers(1, 60))
    if rng.random() < 0.05:
        h, w = (1, int(rng.integers(1, 20000))) if rng.random() < 0.5 else (int(
            rng.integers(8000, 8300)), int(rng.integers(1, 4)))
    mask = rng.random((h, w)) < rng.random()
    if rng.random() < 0.3:
        mask = mask.astype(np.uint8) * int(rng.choice([1, 7, 255]))
    out = np.full((h, w), -1.0)
    ok = flat.edt(mask, out)
    if ok:
        want = ndimage.distance_transform_edt(mask)
        if not np.array_equal(out, want):
            raise Finding(f"edt {h}x{w} differs from SciPy by {np.abs(out - want).max()}")
    elif (np.asarray(mask) == 0).any() and max(h, w) <= 8192:
        raise Finding(f"edt declined a {h}x{w} mask that has a zero")
    for arg in (np.empty((h, w), np.float32), np.empty((h, w + 1)), np.empty((h, w), np.int64)):
        refused(f"edt(mask, {describe(arg)})", lambda arg=arg: flat.edt(mask, arg))


def check_resize(rng: np.random.Generator) -> None:
    sh, sw, dh, dw = (int(v) for v in rng.integers(1, 90, 4))
    if rng.random() < 0.05:
        sh, sw = 1, int(rng.integers(1, 200_000))
    src = rng.random((sh, sw), dtype=np.float32)
    dst = np.empty((dh, dw), np.float32)
    flat.resize(src, dst)
    want = preprocess.resize(src, (dh, dw))  # Pillow's
    if not np.allclose(dst, want, atol=1e-4, rtol=0):
        raise Finding(f"resize {sh}x{sw} -> {dh}x{dw} differs from Pillow by "
                      f"{np.abs(dst - want).max()}")
    for a, b in ((src.astype(np.float64), dst), (src, dst.astype(np.uint8)), (src[None], dst),
                 *((v, dst) for v in strided(src))):
        refused(f"resize({describe(a)}, {describe(b)})", lambda a=a, b=b: flat.resize(a, b))


def difference(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference in grey levels of two 28x28 inputs, the better of the nine
    alignments within one pixel: both paths place a digit by rounding its centre of mass,
    and one halfway between two pixels may round either way (the border is black, so
    rolling brings in nothing)."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return min(float(np.abs(np.roll(a64, (dy, dx), axis=(0, 1)) - b64).mean())
               for dy in (-1, 0, 1) for dx in (-1, 0, 1))


def check_to_mnist(rng: np.random.Generator) -> None:
    h, w = int(rng.integers(2, 200)), int(rng.integers(2, 200))
    kind = int(rng.integers(0, 4))
    if kind == 0:
        grey = np.asarray(drawing(rng, h, w), np.float32) / 255
    elif kind == 1:
        grey = rng.random((h, w), dtype=np.float32)
    elif kind == 2:
        grey = np.full((h, w), rng.choice([0.0, 0.5, 1.0]), np.float32)
    else:
        grey = np.asarray(drawing(rng, h, w), np.float32) / 255
        grey.flat[rng.integers(0, h * w, 4)] = rng.choice(
            [np.nan, np.inf, -np.inf, -1.0, 1e30, 1e-42], 4)
    pixels = rng.random() < 0.3 and kind != 3  # uint8, as the page's PNG arrives
    if pixels:
        grey = (grey * 255).round().astype(np.uint8)
    out = np.zeros((28, 28), np.uint8)
    found = flat.to_mnist(grey, out)
    if found is not None and kind != 3 and not pixels:
        native = preprocess.flat_to_mnist
        preprocess.flat_to_mnist = lambda grey: None
        try:
            want = preprocess.to_mnist(grey)
        finally:
            preprocess.flat_to_mnist = native
        blank, _ = found
        if blank != want.blank or (not blank and difference(out, want.image) > FAR_DIFFERENCE):
            raise Finding(f"to_mnist {h}x{w} kind {kind} differs from the Python steps")
    for a, b in ((grey.astype(np.float64), out), (grey, np.zeros((27, 28), np.uint8)),
                 (grey, np.zeros((28, 28), np.float32)), (grey[None], out)):
        refused(f"to_mnist({describe(a)}, {describe(b)})", lambda a=a, b=b: flat.to_mnist(a, b))


# --- the driver ------------------------------------------------------------------------------


Target = Callable[[np.random.Generator, list], str]


def file_targets(corpus: list[bytes]) -> dict[str, Target]:
    """Targets fed with mutated files: each puts the input it tries in `tried` (kept on a
    finding) and returns what became of it."""
    pngs = [d for d in corpus if d.startswith(png.SIGNATURE)]

    def png_target(rng: np.random.Generator, tried: list) -> str:
        tried.append(mutate(pngs[int(rng.integers(0, len(pngs)))], rng))
        return check_png(tried[-1])

    def decode_target(rng: np.random.Generator, tried: list) -> str:
        tried.append(mutate(corpus[int(rng.integers(0, len(corpus)))], rng))
        return check_decode(tried[-1])

    return {"png": png_target, "decode": decode_target}


def native_target(rng: np.random.Generator, tried: list) -> str:
    check = (check_unfilter, check_edt, check_resize, check_to_mnist)[int(rng.integers(0, 4))]
    tried.append(check.__name__.encode())
    check(rng)
    return check.__name__.removeprefix("check_")


def run(targets: list[str], seed: int, seconds: float, iterations: int | None, out: Path,
        say: Callable[[str], None] = print) -> int:
    """Fuzz `targets` in turn until `seconds` or `iterations` pass; the number of findings."""
    if "native" in targets and flat is None:
        say("vision/_flat.c is not built: the native target is skipped")
        targets = [t for t in targets if t != "native"]
    calls = file_targets(seeds(np.random.default_rng(seed)))
    calls["native"] = native_target
    deadline = time.monotonic() + seconds
    counts: dict[str, dict[str, int]] = {t: {} for t in targets}
    findings = 0
    k = 0
    while time.monotonic() < deadline and (iterations is None or k < iterations):
        target = targets[k % len(targets)]
        rng = np.random.default_rng([seed, k])  # each input depends on (seed, k) alone
        started = time.monotonic()
        tried: list[bytes] = []
        try:
            outcome = calls[target](rng, tried)
            counts[target][outcome] = counts[target].get(outcome, 0) + 1
            if time.monotonic() - started > SLOW_S:
                raise Finding(f"took {time.monotonic() - started:.1f} s")
        except Finding as finding:
            findings += 1
            say(f"FINDING {target} seed {seed} iteration {k}: {finding}")
            out.mkdir(parents=True, exist_ok=True)
            (out / f"{target}-{seed}-{k}.bin").write_bytes(tried[-1] if tried else b"")
        except Exception:  # a bug in the harness itself: stop, loudly
            say(f"harness error on {target} seed {seed} iteration {k}:")
            say(traceback.format_exc())
            return findings + 1
        k += 1
    say(f"fuzz: {k} inputs in {seconds - max(0.0, deadline - time.monotonic()):.0f} s, "
        f"seed {seed}, {findings} finding{'s' * (findings != 1)}")
    for target, outcomes in counts.items():
        say(f"  {target}: " + ", ".join(f"{n} {what}" for what, n in sorted(outcomes.items())))
    return findings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--iterations", type=int, help="Stop after this many inputs.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target", action="append", choices=("png", "decode", "native"),
                        help="Fuzz only this target (repeatable; default: all).")
    parser.add_argument("--out", type=Path, default=Path("fuzz-findings"),
                        help="Where each finding's input is written.")
    args = parser.parse_args(argv)
    # Pillow warns about each odd file it still reads; the mutants are all odd.
    warnings.simplefilter("ignore")
    targets = args.target or ["png", "decode", "native"]
    return 1 if run(targets, args.seed, args.seconds, args.iterations, args.out) else 0


if __name__ == "__main__":
    sys.exit(main())
