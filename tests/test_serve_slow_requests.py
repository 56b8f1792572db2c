"""A real digitlab server (uvicorn, the app, its reader) whose slow pictures are made slow
on purpose: a test-only `_prepare` that takes SLOW_S for any GIF before reading a drawing.
Abandoned slow requests are skipped, slow ones never hold up drawings, and SIGTERM answers
every request in flight with JSON."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from digitlab.api import Recognizer
from digitlab.serve import app as app_module
from serving import drawing, in_thread

GIF = b"GIF89a" + b"\x00" * 40  # only its first bytes matter: the test's _prepare looks there


@pytest.fixture(scope="module")
def recognizer() -> Recognizer:
    return Recognizer.load()


@contextmanager
def slow_server(recognizer: Recognizer, monkeypatch, slow_s: float) -> Iterator[tuple[tuple,
                                                                                   list]]:
    """The address of a real server (two reader threads a lane) whose GIFs take slow_s to
    prepare, and the list of GIFs prepared so far."""
    real, prepared = app_module._prepare, []
    page = drawing()

    def prepare(data: bytes, number: bool):
        if data.startswith(b"GIF"):
            prepared.append(time.monotonic())
            time.sleep(slow_s)
            data = page
        return real(data, number)

    monkeypatch.setattr(app_module, "_prepare", prepare)
    app = app_module.create_app(recognizer, concurrency=2)
    with in_thread(app, join_s=60) as address:
        yield address, prepared


def post_bytes(body: bytes) -> bytes:
    return (b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body)) + body


def post(address, body: bytes) -> tuple[int, dict, float, bytes]:
    """Status, JSON body, seconds taken and head of one POST /api/predict."""
    began = time.monotonic()
    with socket.create_connection(address, timeout=60) as s:
        s.sendall(post_bytes(body))
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, answer = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(answer), time.monotonic() - began, head


@pytest.mark.slow
def test_slow_requests_whose_clients_left_are_skipped(recognizer, monkeypatch):
    """Six slow requests whose clients close at once cost at most what had started (one
    per slow-lane thread): a slow request sent next is answered in about its own time."""
    with slow_server(recognizer, monkeypatch, slow_s=1.0) as (address, prepared):
        for _ in range(6):
            with socket.create_connection(address) as s:
                s.sendall(post_bytes(GIF))
        time.sleep(0.3)  # the server sees them all go
        status, answer, seconds, _ = post(address, GIF)
        assert status == 200 and answer["digit"] == 1
        assert len(prepared) <= 3  # at most two of the six, and this one
        assert seconds < 2.6  # not behind six seconds of abandoned work


@pytest.mark.slow
def test_drawings_keep_their_latency_while_two_slow_uploads_are_read(recognizer, monkeypatch):
    """Two slow pictures, each sent alone, are read in the slow lane: drawings sent
    meanwhile are answered as quickly as ever."""
    with slow_server(recognizer, monkeypatch, slow_s=4.0) as (address, prepared), \
            ThreadPoolExecutor(2) as pool:
        slow = []
        for k in range(2):
            slow.append(pool.submit(post, address, GIF))
            deadline = time.monotonic() + 30
            while len(prepared) < k + 1:
                assert time.monotonic() < deadline
                time.sleep(0.01)
        times = []
        for _ in range(40):
            status, answer, seconds, _ = post(address, drawing())
            assert status == 200 and answer["digit"] == 1
            times.append(seconds)
        assert not any(f.done() for f in slow), "the drawings took as long as the uploads"
        # The bound is loose for a shared test machine; a drawing held behind a slow
        # picture waits its whole SLOW_S.
        assert np.percentile(times, 99) < 0.5, times
        assert all(f.result()[0] == 200 for f in slow)


SERVE_SLOW = """
import sys, time
import numpy as np
from digitlab.serve import app
from digitlab.vision.png import write_grey
real = app._prepare
def prepare(data, number):
    if data.startswith(b"GIF"):
        time.sleep(float(sys.argv[1]))
        data = write_grey(np.pad(np.full((80, 8), 17, np.uint8), 30, constant_values=255))
    return real(data, number)
app._prepare = prepare
from digitlab.cli import app as cli
cli(["serve", "--port", "0", "--no-access-log", "--workers", "1"])
"""


@pytest.mark.slow
def test_sigterm_answers_requests_in_flight_with_json(tmp_path: Path):
    """SIGTERM while two slow requests are being read and three wait: the two are answered
    as usual, the three with a JSON 503 at once (never read); no traceback, a clean exit."""
    script = tmp_path / "serve_slow.py"
    script.write_text(SERVE_SLOW)
    log = Path(tempfile.mkstemp(dir=tmp_path, suffix=".log")[1])
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, str(script), "2.5"], stdout=out,
                                stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "200"})
    try:
        deadline = time.monotonic() + 120
        while not (found := re.search(r"http://127\.0\.0\.1:(\d+)", log.read_text())):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        address = ("127.0.0.1", int(found.group(1)))
        deadline = time.monotonic() + 120
        while "Application startup complete" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        with ThreadPoolExecutor(5) as pool:
            reading = [pool.submit(post, address, GIF) for _ in range(2)]
            time.sleep(0.5)  # both being read, in the two slow-lane threads
            waiting = [pool.submit(post, address, GIF) for _ in range(3)]
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            refused = [f.result(timeout=60) for f in waiting]
            answered = [f.result(timeout=60) for f in reading]
        # uvicorn ends by the signal that stopped it, once it has shut down.
        assert proc.wait(60) in (0, -signal.SIGTERM)
    finally:
        proc.kill()
    text = log.read_text()
    for status, answer, seconds, head in refused:
        assert status == 503 and answer["error"] == "the server is shutting down"
        assert b"retry-after: 1" in head.lower()
        assert seconds < 2.0  # answered at once, not after the ones being read
    assert [(s, a["digit"]) for s, a, _, _ in answered] == [(200, 1), (200, 1)]
    assert "Traceback" not in text and "Cancel" not in text, text
