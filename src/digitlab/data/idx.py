"""Read, write and verify IDX files (the MNIST file format), plain or gzipped.

An IDX file is a 4-byte magic (two zero bytes, a type code, the number of dimensions),
one big-endian uint32 per dimension, then the data. MNIST only uses uint8 (type 0x08):
images are 3-D [N, 28, 28], labels 1-D [N].
"""

from __future__ import annotations

import gzip
import hashlib
import struct
import zlib
from pathlib import Path

import numpy as np

from digitlab.errors import DataError

# Re-exported: modules outside the data layer long imported the helper from here.
from digitlab.files import atomic_write as atomic_write

UINT8 = 0x08


def decode_idx(raw: bytes, *, name: str = "<bytes>", ndim: int | None = None) -> np.ndarray:
    """Parse IDX bytes into a uint8 array, refusing anything malformed with a clear message."""
    if len(raw) < 4:
        raise DataError(f"{name}: file is only {len(raw)} bytes, too short to be an IDX file")
    zero1, zero2, dtype_code, dims = raw[0], raw[1], raw[2], raw[3]
    if zero1 != 0 or zero2 != 0 or dtype_code != UINT8 or dims == 0:
        raise DataError(
            f"{name}: bad magic number 0x{raw[:4].hex()} (expected 0x0000080{ndim or 'N'} "
            "for an IDX file of uint8)"
        )
    if ndim is not None and dims != ndim:
        raise DataError(f"{name}: has {dims} dimensions, expected {ndim}")
    header = 4 + 4 * dims
    if len(raw) < header:
        raise DataError(f"{name}: truncated header ({len(raw)} bytes)")
    shape = struct.unpack(f">{dims}I", raw[4:header])
    expected = int(np.prod(shape, dtype=np.int64))
    body = len(raw) - header
    if body < expected:
        raise DataError(
            f"{name}: truncated: shape {list(shape)} needs {expected} data bytes, found {body}"
        )
    if body > expected:
        raise DataError(f"{name}: {body - expected} unexpected bytes after the data")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def encode_idx(array: np.ndarray) -> bytes:
    """Serialise a uint8 array as IDX bytes."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, UINT8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def read_raw(path: Path) -> bytes:
    """Uncompressed bytes of an IDX file, gunzipping `.gz` files."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from exc
    if data[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{path}: corrupt or truncated gzip data ({exc})") from exc
    return data


def read_idx(path: Path, *, ndim: int | None = None) -> np.ndarray:
    return decode_idx(read_raw(path), name=str(path), ndim=ndim)


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def write_idx_gz(path: Path, array: np.ndarray) -> None:
    """Atomically write an array as a gzipped IDX file (mtime 0, so the bytes are reproducible)."""
    atomic_write(path, gzip.compress(encode_idx(array), compresslevel=6, mtime=0))
