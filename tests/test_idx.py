"""IDX reading and verification on synthetic files: good, truncated, wrong magic, mismatch."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from digitlab.data.idx import decode_idx, encode_idx, read_idx, write_idx_gz
from digitlab.errors import DataError


def test_round_trip_plain_and_gzip(tmp_path):
    images = np.arange(3 * 28 * 28, dtype=np.uint64).astype(np.uint8).reshape(3, 28, 28)
    raw = encode_idx(images)
    assert raw[:4] == bytes([0, 0, 8, 3])
    assert struct.unpack(">3I", raw[4:16]) == (3, 28, 28)
    np.testing.assert_array_equal(decode_idx(raw), images)
    path = tmp_path / "x-idx3-ubyte.gz"
    write_idx_gz(path, images)
    np.testing.assert_array_equal(read_idx(path, ndim=3), images)
    plain = tmp_path / "x-idx3-ubyte"
    plain.write_bytes(raw)
    np.testing.assert_array_equal(read_idx(plain, ndim=3), images)


def test_gzip_bytes_are_reproducible(tmp_path):
    labels = np.arange(10, dtype=np.uint8)
    write_idx_gz(tmp_path / "a.gz", labels)
    write_idx_gz(tmp_path / "b.gz", labels)
    assert (tmp_path / "a.gz").read_bytes() == (tmp_path / "b.gz").read_bytes()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda raw: raw[:-5], "truncated"),
        (lambda raw: raw[:2], "too short"),
        (lambda raw: b"\x00\x00\x09\x03" + raw[4:], "bad magic"),
        (lambda raw: b"\x12\x34\x08\x03" + raw[4:], "bad magic"),
        (lambda raw: raw + b"\x00", "unexpected bytes"),
        (lambda raw: raw[:10], "truncated header"),
    ],
)
def test_malformed_files_are_refused_by_name(mutate, message):
    raw = encode_idx(np.zeros((2, 28, 28), dtype=np.uint8))
    with pytest.raises(DataError, match=message) as info:
        decode_idx(mutate(raw), name="train-images-idx3-ubyte")
    assert "train-images-idx3-ubyte" in str(info.value)


def test_wrong_dimensions_are_refused():
    labels = encode_idx(np.zeros(5, dtype=np.uint8))
    with pytest.raises(DataError, match="has 1 dimensions, expected 3"):
        decode_idx(labels, name="labels", ndim=3)


def test_corrupt_gzip_is_a_data_error(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    good = gzip.compress(encode_idx(np.zeros(100, dtype=np.uint8)))
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="corrupt or truncated gzip"):
        read_idx(path)


def test_atomic_write_gives_ordinary_permissions_and_keeps_existing_ones(tmp_path):
    from digitlab.data import idx

    fresh = tmp_path / "report.html"
    plain = tmp_path / "plain.html"
    plain.write_bytes(b"x")  # what an ordinary open() gives under this process's umask
    idx.atomic_write(fresh, b"x")
    assert fresh.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777  # not mkstemp's 0600
    fresh.chmod(0o640)
    idx.atomic_write(fresh, b"y")
    assert fresh.stat().st_mode & 0o777 == 0o640
    assert fresh.read_bytes() == b"y"


def _gzip_bomb(header: bytes, size: int) -> bytes:
    """A small .gz that expands to `header` followed by `size` zero bytes."""
    import zlib

    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    parts = [packer.compress(header)]
    zeros = bytes(1 << 20)
    for _ in range(size >> 20):
        parts.append(packer.compress(zeros))
    parts.append(packer.flush())
    return b"".join(parts)


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_dimensions_whose_product_overflows_int64_are_a_data_error(tmp_path):
    # 2^22 * 2^21 * 2^21 = 2^64: wraps to 0 in int64, so an empty body used to pass
    raw = bytes([0, 0, 8, 3]) + struct.pack(">3I", 1 << 22, 1 << 21, 1 << 21)
    with pytest.raises(DataError, match="truncated: shape .* needs 18446744073709551616"):
        decode_idx(raw)
    path = tmp_path / "huge-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(raw))
    with pytest.raises(DataError, match="declares 18,446,744,073,709,551,632 bytes"):
        read_idx(path)


def _refused_in_little_memory(path, message: str) -> None:
    """read_idx refuses the file with `message`, its peak memory rising under 50 MiB."""
    before = _peak_rss_mib()
    with pytest.raises(DataError, match=message):
        read_idx(path)
    assert _peak_rss_mib() - before < 50


@pytest.mark.slow
def test_a_gzip_bomb_is_not_decompressed_past_its_declared_size(tmp_path):
    """A labels file declaring 10 entries whose gzip expands to 300 MB of zeros."""
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(_gzip_bomb(bytes([0, 0, 8, 1]) + struct.pack(">I", 10), 300 << 20))
    assert path.stat().st_size < 400_000
    _refused_in_little_memory(path, "decompresses to more than the 18 bytes its header")


@pytest.mark.slow
def test_a_gzip_bomb_declaring_a_huge_size_is_refused_before_decompressing(tmp_path):
    header = bytes([0, 0, 8, 3]) + struct.pack(">3I", 1 << 20, 1 << 10, 1 << 10)  # 1 TiB
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(_gzip_bomb(header, 300 << 20))
    _refused_in_little_memory(path, "more than the 1,073,741,824 an IDX file may hold")


@pytest.mark.slow
def test_gzipped_garbage_is_read_only_as_far_as_the_header(tmp_path):
    path = tmp_path / "junk.gz"
    path.write_bytes(_gzip_bomb(b"PK\x03\x04 not an IDX file", 400 << 20))
    _refused_in_little_memory(path, "bad magic number 0x504b0304")


def test_multi_member_and_zero_padded_gzip_files_still_read(tmp_path):
    raw = encode_idx(np.arange(100, dtype=np.uint8))
    path = tmp_path / "labels.gz"
    path.write_bytes(gzip.compress(raw[:50]) + gzip.compress(raw[50:]) + bytes(512))
    assert read_idx(path).tolist() == list(range(100))
    path.write_bytes(gzip.compress(raw + b"extra"))
    with pytest.raises(DataError, match="5 unexpected bytes after the data"):
        read_idx(path)
