"""The HTTP API against a real uvicorn on 127.0.0.1: answers, every error, CORS, the CLI."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import io
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import httpx
import numpy as np
import pytest
from fastapi import FastAPI, Query
from fastapi.exceptions import RequestValidationError
from PIL import Image, ImageDraw
from pydantic import ValidationError
from typer.testing import CliRunner

from conftest import require_native
from digitlab.api import Recognizer
from digitlab.cli import app as cli_app
from digitlab.serve.app import _prepare, _prepare_quickly, create_app, predict_params
from digitlab.serve.batcher import MAX_BATCH
from digitlab.serve.models import PredictParams
from digitlab.vision import native
from serving import in_thread

LIMIT = 256 * 1024  # the test server's --max-bytes; small so 413s are cheap to provoke


@contextmanager
def running(app) -> Iterator[str]:
    """A real uvicorn serving `app` on a free port of 127.0.0.1, in a thread: its URL."""
    with in_thread(app, plain=True) as (host, port):
        yield f"http://{host}:{port}"


@pytest.fixture(scope="module")
def recognizer() -> Recognizer:
    return Recognizer.load()  # the model shipped with digitlab, as `digitlab serve` uses


@pytest.fixture(scope="module")
def url(recognizer) -> Iterator[str]:
    with running(create_app(recognizer, max_bytes=LIMIT)) as base:
        yield base


@pytest.fixture(scope="module")
def client(url) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=30) as c:
        yield c


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def drawn(mnist_digit: np.ndarray, size: int = 140) -> bytes:
    """An MNIST digit as the drawing page sends one: dark ink on white, 140x140."""
    return png(np.asarray(Image.fromarray(255 - mnist_digit).resize((size, size),
                                                                   Image.BILINEAR)))


@pytest.fixture(scope="module")
def digits(mnist_test_split) -> list[tuple[int, bytes]]:
    return [(int(mnist_test_split.labels[i]), drawn(mnist_test_split.images[i]))
            for i in range(10)]


# --- answers ------------------------------------------------------------------------------


@pytest.mark.slow
def test_raw_png_gets_the_same_answer_as_the_python_api(client, recognizer, digits):
    right = 0
    for label, data in digits:
        r = client.post("/api/predict", content=data, headers={"Content-Type": "image/png"})
        assert r.status_code == 200, r.text
        assert r.json() == recognizer.predict(data).to_json()
        right += r.json()["digit"] == label
    assert right >= 9  # the shipped model is ~99% accurate on MNIST


@pytest.mark.slow
def test_multipart_file_or_image_field_octet_stream_and_no_type_agree(client, digits):
    _, data = digits[0]
    answers = [
        client.post("/api/predict", files={"file": ("a.png", data, "image/png")}),
        client.post("/api/predict", files={"image": ("a.png", data, "application/x-whatever")}),
        client.post("/api/predict", content=data,
                    headers={"Content-Type": "application/octet-stream"}),
        client.post("/api/predict", content=data, headers={"Content-Type": ""}),
    ]
    assert [a.status_code for a in answers] == [200] * 4
    assert all(a.json() == answers[0].json() for a in answers)


@pytest.mark.slow
def test_top_k_and_the_input_the_model_saw(client, recognizer, digits):
    _, data = digits[3]
    r = client.post("/api/predict?top_k=5&include_input=true", content=data)
    assert r.status_code == 200
    body = r.json()
    assert len(body["top_k"]) == 5
    assert body["top_k"][0][0] == body["digit"]
    seen = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["input_png"]))))
    assert seen.shape == (28, 28)
    assert np.array_equal(seen, recognizer.predict(data).model_input)
    assert "input_png" not in client.post("/api/predict", content=data).json()


@pytest.mark.slow
def test_number_reads_the_digits_left_to_right(client, mnist_test_split):
    images, labels = mnist_test_split.images, mnist_test_split.labels
    picks = [int(np.flatnonzero(labels == d)[0]) for d in (4, 0, 7)]
    row = np.zeros((28, 28 * 4), np.uint8)
    for slot, i in enumerate(picks):
        row[:, slot * 36: slot * 36 + 28] = images[i]
    data = png(np.asarray(Image.fromarray(255 - row).resize((112 * 4, 112))))
    r = client.post("/api/predict?number=true&include_input=true", content=data)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["number"] == "407"
    assert [d["digit"] for d in body["digits"]] == [4, 0, 7]
    assert all("input_png" in d for d in body["digits"])


def test_model_info_and_health(client, recognizer):
    info = client.get("/api/model").json()
    assert info == json.loads(json.dumps(recognizer.info()))
    assert info["model"] and info["parameters"] > 0
    assert 0.9 < info["test_accuracy"] <= 1.0
    assert client.get("/healthz").json() == {"status": "ok", "model": info["model"]}


# --- errors: 4xx with a JSON body, and the server carries on ------------------------------


def problem(r: httpx.Response, status: int, *fragments: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "detail"}
    for fragment in fragments:
        assert fragment in body["error"], body
    return body


def fake_png(width: int, height: int) -> bytes:
    """A PNG header that claims a huge picture, with no pixel data at all."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def test_not_an_image_is_415(client):
    problem(client.post("/api/predict", content=b"hello", headers={"Content-Type": "text/plain"}),
            415, "text/plain")
    problem(client.post("/api/predict", content=b"no picture in here"), 415, "not an image")
    problem(client.post("/api/predict", files={"file": ("a.txt", b"words", "text/plain")}), 415)
    problem(client.post("/api/predict", content=b"%PDF-1.4\n"), 415, "PNG, JPEG")


def test_no_digit_and_unusable_images_are_422(client):
    blank = problem(client.post("/api/predict?include_input=true",
                                content=png(np.full((100, 100), 255, np.uint8))),
                    422, "no digit")
    assert blank["detail"]["blank"] is True
    problem(client.post("/api/predict", content=b""), 422, "no image")
    problem(client.post("/api/predict", content=png(np.zeros((2, 2), np.uint8))), 422, "2x2")
    white = png(np.full((50, 50), 255, np.uint8))
    problem(client.post("/api/predict", content=white[: len(white) // 2]), 422)
    missing = problem(client.post("/api/predict", files={"picture": ("a.png", b"x")}), 422,
                      "'file'")
    assert missing["detail"] == {"fields": ["picture"]}


@pytest.mark.parametrize("query", ["top_k=0", "top_k=11", "top_k=three", "number=maybe",
                                   "include_input=2", "top_k=" + "9" * 5000,
                                   "top_k=0&number=x"])
def test_bad_parameters_are_422(client, query, caplog):
    """Every bad parameter is a 422 with one entry per parameter, even an integer too long
    for Python to convert; nothing reaches the server's log as an error."""
    with caplog.at_level("WARNING"):
        body = problem(client.post(f"/api/predict?{query}", content=b"x"), 422,
                       "bad parameters")
    assert [e["where"] for e in body["detail"]] == [
        f"query.{p.split('=')[0]}" for p in sorted(query.split("&"))]
    assert all(set(e) == {"where", "message", "got"} for e in body["detail"])
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


def test_malformed_multipart_is_400(client):
    problem(client.post("/api/predict", content=b"--x\r\nnonsense",
                        headers={"Content-Type": "multipart/form-data"}), 400, "boundary")


def test_too_many_pixels_is_413(client):
    problem(client.post("/api/predict", content=fake_png(10_000, 5_000)), 413, "pixel limit")
    problem(client.post("/api/predict", content=fake_png(20_000, 20_000)), 413, "pixel")
    # The server's own limit, well below the decoder's: preprocessing works at 1,600 px.
    body = problem(client.post("/api/predict", content=fake_png(5_000, 4_000)), 413,
                   "16,000,000 pixel limit")
    assert body["detail"] == {"limit_pixels": 16_000_000, "limit_decode_bytes": 64 * 2**20}
    big = io.BytesIO()
    Image.new("L", (4_100, 4_000), 255).save(big, "PNG")  # a real, plain grey PNG
    problem(client.post("/api/predict", content=big.getvalue()), 413, "4100x4000")


def test_over_the_size_limit_is_413_and_the_connection_is_reused(client, digits):
    body = problem(client.post("/api/predict", content=b"\0" * (2 * LIMIT)), 413,
                   "262,144 bytes")
    assert body["detail"] == {"limit_bytes": LIMIT}
    assert client.post("/api/predict", content=digits[0][1]).status_code == 200


def raw_request(url: str, head: str, body_chunks: list[bytes] = ()) -> tuple[int, dict]:
    """Speak HTTP/1.1 by hand, for bodies no polite client would send."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(head.encode() + b"\r\n")
        for chunk in body_chunks:
            s.sendall(chunk)
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            data = s.recv(65536)
            if not data:
                break
            reply += data
    status = int(reply.split(b" ", 2)[1])
    return status, json.loads(reply.split(b"\r\n\r\n", 1)[1])


def test_a_huge_declared_body_is_refused_without_reading_it(url):
    status, body = raw_request(url, "POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                    "Content-Type: image/png\r\nContent-Length: 1000000000\r\n")
    assert status == 413 and body["detail"] == {"limit_bytes": LIMIT}


def test_a_streamed_body_is_counted_while_it_arrives(url):
    chunk = b"\0" * 65536
    chunks = [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * (LIMIT // len(chunk) + 2) + [b"0\r\n\r\n"]
    status, body = raw_request(url, "POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                    "Content-Type: image/png\r\nTransfer-Encoding: chunked\r\n",
                               chunks)
    assert status == 413 and "limit" in body["error"]


def test_a_client_that_leaves_mid_body_costs_nothing(url, client, digits):
    """Headers and half the promised body, then the client hangs up: the request never
    reaches a reader, and the next one is answered as usual."""
    host, port = url.removeprefix("http://").split(":")
    for _ in range(3):
        with socket.create_connection((host, int(port)), timeout=30) as s:
            s.sendall(b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      b"Content-Type: image/png\r\nContent-Length: 5000\r\n\r\n"
                      + digits[0][1][:100])
    assert client.post("/api/predict", content=digits[0][1]).status_code == 200


def test_unknown_paths_and_methods_are_json(client):
    problem(client.get("/api/nothing"), 404)
    problem(client.get("/api/predict"), 405)
    problem(client.get("/static/../api.py"), 404)
    problem(client.get("/static/api.py"), 404)


def test_a_bug_is_a_json_500_and_the_next_request_is_fine(recognizer, digits):
    armed = threading.Event()  # set once start-up (and its warm-up) is over

    def broken_backend(images: np.ndarray) -> np.ndarray:
        if armed.is_set():
            armed.clear()
            raise RuntimeError("a bug in the model call")
        return recognizer.backend(images)

    broken = Recognizer(broken_backend, info=recognizer.info())
    with running(create_app(broken)) as base, httpx.Client(base_url=base) as c:
        armed.set()
        problem(c.post("/api/predict", content=digits[0][1]), 500, "internal error")
        assert c.post("/api/predict", content=digits[0][1]).status_code == 200


def test_an_unexpected_error_in_the_endpoint_is_a_logged_json_500(recognizer, digits,
                                                                 monkeypatch, caplog):
    def broken(body: bytes, content_type: str | None) -> bytes:
        raise ZeroDivisionError("a bug")

    with running(create_app(recognizer)) as base, httpx.Client(base_url=base) as c:
        monkeypatch.setattr("digitlab.serve.app.image_bytes", broken)
        with caplog.at_level("ERROR", logger="digitlab.serve"):
            try:
                answer = c.post("/api/predict", content=digits[0][1])
            except httpx.TransportError:
                answer = None  # uvicorn closes the connection after an application's error
        if answer is not None:
            assert problem(answer, 500, "internal error")["detail"] == "ZeroDivisionError"
        assert "unexpected error on POST /api/predict" in caplog.text
        monkeypatch.undo()
        with httpx.Client(base_url=base) as fresh:  # the server goes on serving
            assert fresh.post("/api/predict", content=digits[0][1]).status_code == 200


def test_a_bug_behind_the_predict_endpoint_is_logged_once_as_a_json_500(recognizer, caplog):
    """The model card is served by the FastAPI app mounted behind the one in front: its
    error is answered there and logged once, by the app in front."""

    class Broken(Recognizer):
        armed = False

        def info(self):
            if Broken.armed:
                raise ZeroDivisionError("a bug")
            return super().info()

    broken = Broken(recognizer.backend, info=recognizer.info())
    with running(create_app(broken)) as base, httpx.Client(base_url=base) as c:
        Broken.armed = True
        with caplog.at_level("ERROR", logger="digitlab.serve"):
            try:
                answer = c.get("/api/model")
            except httpx.TransportError:
                answer = None  # uvicorn closes the connection after an application's error
            if answer is not None:
                assert problem(answer, 500, "internal error")["detail"] == "ZeroDivisionError"
                assert answer.headers["x-content-type-options"] == "nosniff"
            # The answer has gone before the app in front logs the error: wait for it.
            deadline = time.monotonic() + 10
            while "unexpected error" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.2)
        Broken.armed = False
        assert caplog.text.count("unexpected error on GET /api/model") == 1
        with httpx.Client(base_url=base) as fresh:
            assert fresh.get("/api/model").status_code == 200


def test_parsed_query_parameters_are_shared_so_cannot_be_changed():
    params = predict_params(b"top_k=2&include_input=true")
    assert predict_params(b"top_k=2&include_input=true") == params
    with pytest.raises(ValidationError):
        params.top_k = 5
    for _ in range(2):  # a refusal is raised each time, never remembered as an answer
        with pytest.raises(RequestValidationError):
            predict_params(b"top_k=0")


def test_start_up_objects_are_frozen_out_of_the_garbage_collector(recognizer, digits):
    """A full collection under load would walk every module and the model each time; what
    start-up made is frozen once, and the server answers as before."""
    gc.unfreeze()  # whatever another server in this process froze
    assert gc.get_freeze_count() == 0
    with running(create_app(recognizer)) as base, httpx.Client(base_url=base) as c:
        frozen = gc.get_freeze_count()
        assert frozen > 10_000
        assert c.post("/api/predict", content=digits[0][1]).json()["digit"] == digits[0][0]
        assert gc.get_freeze_count() <= frozen  # requests freeze nothing more
    assert gc.get_freeze_count() == 0  # stopping hands them back


def test_start_up_reads_each_kind_of_picture_once(recognizer, digits, monkeypatch):
    """Before the first request, the server has read a 28x28 digit, a drawing through the
    compiled path and a photo-like picture through the lighting analysis (whose first call
    costs twice the next), so no early request pays for lazy set-up."""
    from digitlab.vision import preprocess

    seen = Counter()
    for name in ("_photo_residual", "flat_to_mnist", "from_mnist_like"):
        original = getattr(preprocess, name)

        def counted(*args, _original=original, _name=name, **kwargs):
            result = _original(*args, **kwargs)
            seen[_name, result is not None] += 1
            return result
        monkeypatch.setattr(preprocess, name, counted)
    with running(create_app(recognizer)) as base, httpx.Client(base_url=base) as c:
        assert seen[("_photo_residual", True)] >= 1 and seen[("from_mnist_like", True)] >= 1
        assert seen[("flat_to_mnist", True)] >= 1 or not native.flat
        before = sum(seen.values())
        assert c.post("/api/predict", content=digits[0][1]).json()["digit"] == digits[0][0]
        assert sum(seen.values()) > before  # the same functions serve the requests


def test_the_event_loop_answers_while_a_digit_is_being_read(recognizer, digits):
    entered, release = threading.Event(), threading.Event()

    def slow_backend(images: np.ndarray) -> np.ndarray:
        entered.set()
        release.wait(30)
        return recognizer.backend(images)

    slow = Recognizer(slow_backend, info=recognizer.info())
    release.set()  # let the start-up warm-up through
    with running(create_app(slow, concurrency=1)) as base, httpx.Client(base_url=base) as c:
        entered.clear()
        release.clear()
        result: dict[str, httpx.Response] = {}
        thread = threading.Thread(target=lambda: result.update(
            r=c.post("/api/predict", content=digits[0][1])))
        thread.start()
        assert entered.wait(30)
        with httpx.Client(base_url=base) as other:  # while the model call is stuck
            assert other.get("/healthz").status_code == 200
            assert other.get("/api/model").status_code == 200
        assert thread.is_alive()
        release.set()
        thread.join(30)
        assert result["r"].status_code == 200


def behind_a_held_model_call(recognizer: Recognizer, first: bytes, bodies: list[bytes]
                             ) -> tuple[list[int], list[httpx.Response]]:
    """The sizes of the model calls, and the answers to `first` and then to `bodies`, all
    posted together while a real server (one reader thread) is held in the model call for
    `first`."""
    entered, release = threading.Event(), threading.Event()
    sizes: list[int] = []

    def counting_backend(images: np.ndarray) -> np.ndarray:
        sizes.append(len(images))
        entered.set()
        release.wait(30)
        return recognizer.backend(images)

    app = create_app(Recognizer(counting_backend, info=recognizer.info()), concurrency=1)
    release.set()  # the start-up warm-up
    with running(app) as base:
        entered.clear()
        release.clear()
        sizes.clear()
        answers: dict[int, httpx.Response] = {}

        def post(k: int, data: bytes) -> None:
            with httpx.Client(base_url=base, timeout=30) as c:
                answers[k] = c.post("/api/predict", content=data)

        held = threading.Thread(target=post, args=(0, first))
        held.start()
        assert entered.wait(30)  # the first request is inside the model call
        rest = [threading.Thread(target=post, args=(k, d)) for k, d in enumerate(bodies, 1)]
        for thread in rest:
            thread.start()
        deadline = time.monotonic() + 30
        while app.state.reader.waiting() < len(bodies) and time.monotonic() < deadline:
            time.sleep(0.01)
        release.set()
        for thread in [held, *rest]:
            thread.join(30)
    return sizes, [answers[k] for k in range(len(bodies) + 1)]


def assert_answered_as_alone(recognizer: Recognizer, bodies: list[bytes],
                             answers: list[httpx.Response]) -> None:
    """Each answer is a 200 with the digit and probabilities the image gets alone."""
    for data, answer in zip(bodies, answers, strict=True):
        alone = recognizer.predict(data).to_json()
        got = answer.json()
        assert answer.status_code == 200, got
        assert got["digit"] == alone["digit"]
        assert np.allclose(got["probabilities"], alone["probabilities"], atol=1e-5)


def test_concurrent_requests_share_one_model_call(recognizer, digits):
    """While the model reads one request, the others queue and are read in one call (a
    batch holds up to MAX_BATCH), with the answers each would get alone."""
    bodies = [data for _, data in digits]
    sizes, answers = behind_a_held_model_call(recognizer, bodies[0], bodies[1:])
    # ... up to MAX_BATCH at a time
    assert sizes == [1] + [min(MAX_BATCH, 9 - i) for i in range(0, 9, MAX_BATCH)]
    assert_answered_as_alone(recognizer, bodies, answers)


def slow_pictures(mnist_digit: np.ndarray) -> list[bytes]:
    """Pictures the compiled flat-paper path declines: a JPEG (not the page's plain PNG) and
    a drawing with a stroke along the canvas's bottom edge (not a stroke crossing it: a run
    of ink along the border as long as a shadow's)."""
    page = Image.fromarray(255 - mnist_digit).resize((140, 140), Image.BILINEAR)
    jpeg = io.BytesIO()
    page.save(jpeg, "JPEG", quality=90)
    off_edge = page.copy()
    ImageDraw.Draw(off_edge).line([(70, 100), (10, 139), (139, 139)], fill=0, width=9)
    return [jpeg.getvalue(), png(np.asarray(off_edge))]


@pytest.mark.slow
def test_pictures_read_the_slow_way_do_not_hold_up_the_drawings_taken_with_them(
        recognizer, digits, mnist_test_split):
    """Queued together, the page's drawings are read together in one model call, and each
    picture only the Python steps read (tens of times slower) in a call of its own, by the
    slow lane; every answer is the one each would get alone."""
    require_native()  # without it there is no quick way: all are read together
    slow = slow_pictures(mnist_test_split.images[7])
    for data in slow:
        assert _prepare_quickly(data) is None
    for _, data in digits[1:4]:
        quick = _prepare_quickly(data)
        assert quick is not None
        assert np.array_equal(quick.inputs[0], _prepare(data, False).inputs[0])
    bodies = [digits[1][1], slow[0], digits[2][1], slow[1], digits[3][1]]
    sizes, answers = behind_a_held_model_call(recognizer, digits[0][1], bodies)
    # the held first request, then the three drawings and (the slow lane, in parallel) the
    # JPEG and the off-edge drawing, each on its own
    assert sizes[0] == 1 and sorted(sizes[1:]) == [1, 1, 3]
    assert_answered_as_alone(recognizer, bodies, answers[1:])


def test_requests_do_not_consult_opentelemetry(recognizer, digits, monkeypatch):
    """FastAPI 0.16x asks OpenTelemetry for its providers on every request, even with none
    set up (about 4% of the server's CPU); digitlab switches those hooks off."""
    trace = pytest.importorskip("opentelemetry.trace")
    calls: list[int] = []
    real = trace.get_tracer_provider

    def counted():
        calls.append(1)
        return real()

    monkeypatch.setattr(trace, "get_tracer_provider", counted)
    with running(create_app(recognizer)) as base, httpx.Client(base_url=base) as c:
        calls.clear()
        for _, data in digits[:3]:
            assert c.post("/api/predict", content=data).status_code == 200
        assert c.get("/healthz").status_code == 200
    assert calls == []


# --- pages, docs, CORS ----------------------------------------------------------------------


def test_page_and_assets_come_from_digitlab_itself(client):
    page = client.get("/")
    assert page.status_code == 200
    assert "default-src 'self'" in page.headers["content-security-policy"]
    refs = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert "/static/app.js" in refs and "/static/style.css" in refs
    assert not [r for r in refs if "//" in r]  # nothing from another host
    for ref in ("/static/app.js", "/static/style.css"):
        assert client.get(ref).status_code == 200


def test_openapi_schema_and_offline_docs(client):
    schema = client.get("/openapi.json").json()
    predict = schema["paths"]["/api/predict"]["post"]
    assert {"multipart/form-data", "image/*"} <= set(predict["requestBody"]["content"])
    assert {"413", "415", "422"} <= set(predict["responses"])
    assert {"/api/model", "/healthz"} <= set(schema["paths"])
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/api/predict" in docs.text and "top_k" in docs.text
    assert not [r for r in re.findall(r'(?:src|href)="([^"]+)"', docs.text) if "//" in r]


def test_cors_is_off_unless_asked_for(client, recognizer):
    preflight = {"Origin": "https://example.org", "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in client.options("/api/predict",
                                                               headers=preflight).headers
    assert "access-control-allow-origin" not in client.get(
        "/healthz", headers={"Origin": "https://example.org"}).headers
    app = create_app(recognizer, cors_origin="https://example.org")
    with running(app) as base, httpx.Client(base_url=base) as c:
        ok = c.options("/api/predict", headers=preflight)
        assert ok.headers["access-control-allow-origin"] == "https://example.org"
        other = c.get("/healthz", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


# --- the command ----------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "message"), [
    (["--cors", "example.org/path"], "--cors takes"),
    (["--workers", "0"], "--workers must be at least 1"),
    (["--port", "70000"], "--port must be between"),
    (["--max-bytes", "10"], "--max-bytes must be between"),
    (["--max-bytes", str(2**30)], "decoder's own limit"),
    (["--run", "/nonexistent/run"], "/nonexistent/run"),
    # With several workers the model is tried in a spawned process; its error comes back.
    (["--run", "/nonexistent/run", "--workers", "2"], "/nonexistent/run"),
])
@pytest.mark.slow
def test_serve_refuses_bad_options_in_one_line(args, message):
    result = CliRunner().invoke(cli_app, ["serve", *args])
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output


def test_serve_refuses_a_busy_port():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(cli_app, ["serve", "--port", str(port)])
    assert result.exit_code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.output


@pytest.mark.slow
def workers_of(parent: int) -> list[str]:
    """The worker processes of `digitlab serve` (not multiprocessing's resource tracker)."""
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    return [pid for pid in children
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]


def test_digitlab_serve_with_two_workers(digits):
    """Two workers answer; 32 keep-alive clients connecting at once are split evenly between
    them, whichever is idle (uvicorn's own multi-process mode, where the idle worker takes
    them all, split them 32/0, 28/4 or 25/7 in most of ten rounds); a worker killed by the
    system is replaced and the server goes on answering; the supervisor holds no model; Ctrl+C
    stops it all."""
    proc = subprocess.Popen([sys.executable, "-m", "digitlab", "serve", "--port", "0",
                             "--workers", "2", "--no-access-log"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        first = proc.stdout.readline()
        base = re.search(r"http://127\.0\.0\.1:\d+", first).group(0)
        port = int(base.rsplit(":", 1)[1])
        with httpx.Client(base_url=base, timeout=60) as c:
            # The socket is bound before the workers start; they answer once loaded.
            for _, data in digits[:4]:
                assert c.post("/api/predict", content=data).status_code == 200
        # The supervisor holds no torch and no model of its own.
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        assert "libtorch" not in maps and "torch/lib" not in maps and "onnxruntime" not in maps
        # The workers run the shipped model's ONNX file on onnxruntime: no torch either.
        workers = workers_of(proc.pid)
        maps = [Path(f"/proc/{pid}/maps").read_text() for pid in workers]
        assert len(workers) == 2 and all("onnxruntime" in m for m in maps)
        assert not [m for m in maps if "libtorch" in m]

        for _ in range(3):
            async def round_() -> list[int]:
                writers = await hold_connections(port, digits[1][1], 32)
                split = connections_per_worker(proc.pid, port)
                for writer in writers:
                    writer.close()
                await asyncio.sleep(0.5)  # the workers see the connections go
                return split
            split = asyncio.run(round_())
            assert len(split) == 2 and sum(split) == 32 and split[0] >= 12, split

        os.kill(int(workers[0]), signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            now = workers_of(proc.pid)
            if len(now) == 2 and workers[0] not in now:
                break
            time.sleep(0.2)
        with httpx.Client(base_url=base, timeout=60) as c:
            for _, data in digits[:6]:
                assert c.post("/api/predict", content=data).status_code == 200
        assert proc.poll() is None
        workers = workers_of(proc.pid)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert "ended (exit code -9); starting another" in out and "Traceback" not in out
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]  # all stopped


def connections_per_worker(parent: int, port: int) -> list[int]:
    """How many established connections to `port` each child of `parent` holds (Linux's
    /proc: the workers' socket inodes matched with the TCP table)."""
    children = workers_of(parent)
    served: dict[str, int] = {}
    for name in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{name}").read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                served[fields[9]] = 0
    for pid in children:
        inodes = set()
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        served.update({inode: int(pid) for inode in inodes & served.keys()})
    by_worker = Counter(served.values())
    return sorted(by_worker[int(pid)] for pid in children if by_worker[int(pid)])


async def hold_connections(port: int, body: bytes, count: int) -> list[asyncio.StreamWriter]:
    """`count` clients that connect at once, each posting a digit twice on its keep-alive
    connection (serve_load's clients), left open."""
    async def client() -> asyncio.StreamWriter:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(2):
            writer.write(b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Content-Type: image/png\r\nContent-Length: %d\r\n\r\n" % len(body)
                         + body)
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))
            await reader.readexactly(length)
        return writer
    return list(await asyncio.gather(*(client() for _ in range(count))))


QUERIES = ["", "top_k=0", "top_k=11", "top_k=three", "top_k=-5", "top_k= 4", "top_k=4.0",
           "top_k=4.", "top_k=4.5", "top_k=", "top_k=%2B3", "top_k=0x3", "top_k=3_0",
           "top_k=4__0", "top_k=_4", "top_k=%EF%BC%91", "top_k=1e1", "top_k=2&top_k=4",
           "top_k=" + "9" * 5000, "number=maybe", "number=", "number=YES", "number=%20true",
           "include_input=2", "include_input=On", "number=1&include_input=0",
           "top_k=0&number=x&include_input=f", "unknown=1"]


def test_query_parameters_are_read_as_a_fastapi_route_reads_them() -> None:
    """/api/predict validates its query string with PredictParams itself (a plain ASGI
    endpoint); a FastAPI route taking the same model accepts and refuses the same."""
    reference = FastAPI()

    @reference.post("/")
    async def echo(params: Annotated[PredictParams, Query()]):
        return params

    with running(reference) as base, httpx.Client(base_url=base, timeout=30) as client:
        for query in QUERIES:
            expected = client.post(f"/?{query}")
            try:
                got = predict_params(query.encode())
            except RequestValidationError as exc:
                assert expected.status_code == 422, query
                wanted = [(e["loc"], e["msg"], e["input"]) for e in expected.json()["detail"]]
                assert [(list(e["loc"]), e["msg"], e["input"]) for e in exc.errors()] == wanted
            else:
                assert expected.status_code == 200 and expected.json() == got.model_dump(), query
