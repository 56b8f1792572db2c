"""Read, write and verify IDX files (the MNIST file format), plain or gzipped.

An IDX file is a 4-byte magic (two zero bytes, a type code, the number of dimensions),
one big-endian uint32 per dimension, then the data. MNIST only uses uint8 (type 0x08):
images are 3-D [N, 28, 28], labels 1-D [N].
"""

from __future__ import annotations

import gzip
import hashlib
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from digitlab.errors import DataError
from digitlab.files import atomic_write

UINT8 = 0x08
HEADER_MAX = 4 + 4 * 255  # the longest IDX header: 255 dimensions
# Far above the largest dataset digitlab knows (MNIST's training images, 47 MB): a bound on
# what a gzipped file may expand to, whatever its header says.
MAX_IDX_BYTES = 1 << 30
TRAILING = 16  # decompressed past the declared size, to report extra bytes as such


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
    expected = math.prod(shape)  # Python ints: a product of crafted sizes must not wrap
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
    return gunzip_idx(data, name=str(path)) if data[:2] == b"\x1f\x8b" else data


def _declared_size(head: bytes) -> int | None:
    """Bytes the IDX file starting with `head` says it holds; None until the header is
    complete or when `head` is not an IDX header at all (then decode_idx says why)."""
    if len(head) < 4 or head[:3] != bytes([0, 0, UINT8]) or head[3] == 0:
        return None
    header = 4 + 4 * head[3]
    if len(head) < header:
        return None
    return header + math.prod(struct.unpack(f">{head[3]}I", head[4:header]))


def gunzip_idx(data: bytes, *, name: str, limit: int = MAX_IDX_BYTES) -> bytes:
    """Gunzip an IDX file, decompressing no more than its header declares (and never more
    than `limit`): a small crafted file cannot expand to gigabytes first."""
    out = bytearray()
    stream = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip framing only
    pending, cap, declared = data, HEADER_MAX, 0
    try:
        while True:
            out += stream.decompress(pending, cap + 1 - len(out))
            if cap == HEADER_MAX and (len(out) >= HEADER_MAX or stream.eof):
                size = _declared_size(bytes(out))
                if size is None:  # not IDX: the header alone shows what is wrong
                    return bytes(out[:HEADER_MAX])
                declared = size
                if declared > limit:
                    raise DataError(f"{name}: declares {declared:,} bytes of data, more than "
                                    f"the {limit:,} an IDX file may hold here")
                cap = max(declared + TRAILING, HEADER_MAX)
            if len(out) > cap:
                raise DataError(f"{name}: decompresses to more than the {declared:,} bytes "
                                "its header declares")
            if stream.eof:
                if not stream.unused_data.strip(b"\0"):
                    return bytes(out)
                pending = stream.unused_data  # another gzip member follows
                stream = zlib.decompressobj(16 + zlib.MAX_WBITS)
            elif stream.unconsumed_tail:
                pending = stream.unconsumed_tail
            else:
                raise EOFError("compressed data ended before the end-of-stream marker")
    except (EOFError, zlib.error) as exc:
        raise DataError(f"{name}: corrupt or truncated gzip data ({exc})") from exc


def read_idx(path: Path, *, ndim: int | None = None) -> np.ndarray:
    return decode_idx(read_raw(path), name=str(path), ndim=ndim)


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def write_idx_gz(path: Path, array: np.ndarray) -> None:
    """Atomically write an array as a gzipped IDX file (mtime 0, so the bytes are reproducible)."""
    atomic_write(path, gzip.compress(encode_idx(array), compresslevel=6, mtime=0))
