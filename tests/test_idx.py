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
