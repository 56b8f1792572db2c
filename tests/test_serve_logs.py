"""The server's access log: uvicorn's own lines, from digitlab's quicker formatter, and the
serving processes set up to use it."""

from __future__ import annotations

import io
import logging
import os
import select
import signal
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
import uvicorn
from uvicorn.config import LOGGING_CONFIG
from uvicorn.logging import AccessFormatter as UvicornAccessFormatter

from digitlab.serve import run as serve_run
from digitlab.serve import workers
from digitlab.serve.logs import BLOCK, FLUSH_S, LOG_CONFIG, AccessFormatter, AccessHandler
from digitlab.vision.png import write_grey

UVICORN_FORMAT = LOGGING_CONFIG["formatters"]["access"]["fmt"]


def access_record(level: int, client: str, method: str, path: str, status: int
                  ) -> logging.LogRecord:
    """The record uvicorn's HTTP protocols log for a request."""
    return logging.LogRecord("uvicorn.access", level, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                             (client, method, path, "1.1", status), None)


@pytest.mark.parametrize("colours", [False, True])
def test_access_lines_are_uvicorns_word_for_word(colours):
    theirs = UvicornAccessFormatter(UVICORN_FORMAT, use_colors=colours)
    ours = AccessFormatter(UVICORN_FORMAT, use_colors=colours)
    for _ in range(2):  # the second time from the phrases and prefixes worked out once
        for status in (200, 201, 304, 404, 413, 415, 422, 500, 299, 999):
            for level in (logging.INFO, logging.WARNING, logging.DEBUG):
                for client, method, path in [("127.0.0.1:5432", "POST", "/api/predict"),
                                             ("[::1]:80", "GET", "/api/predict?top_k=3"),
                                             ("", "GET", "/%E2%9C%93")]:
                    record = access_record(level, client, method, path, status)
                    assert ours.format(record) == theirs.format(record)
    # Another style of format is uvicorn's to fill in.
    brace = "{levelprefix} {client_addr} {request_line} {status_code}"
    record = access_record(logging.INFO, "1.2.3.4:5", "GET", "/", 200)
    assert (AccessFormatter(brace, style="{", use_colors=False).format(record)
            == UvicornAccessFormatter(brace, style="{", use_colors=False).format(record))


def test_serving_processes_log_through_it(monkeypatch):
    """Both ways digitlab serve runs uvicorn (in its own process, and in each worker)
    configure logging with LOG_CONFIG; records there skip the fields no line shows."""
    for name in ("logThreads", "logProcesses", "logMultiprocessing"):
        monkeypatch.setattr(logging, name, getattr(logging, name))  # put back afterwards
    config = uvicorn.Config(**workers.worker_config("127.0.0.1", 8000, 2, "info", True))
    assert config.log_config is LOG_CONFIG and config.access_log
    seen = {}

    def run(server, sockets=None):
        seen["config"] = server.config
        seen["lean"] = not (logging.logThreads or logging.logProcesses
                            or logging.logMultiprocessing)
        seen["caller"] = logging._srcfile  # left as logging sets it: its private switch
        for sock in sockets or ():
            sock.close()

    monkeypatch.setattr(uvicorn.Server, "run", run)
    serve_run.serve(run=None, host="127.0.0.1", port=0, workers=1, max_bytes=2**20,
                    report=lambda line: None)
    assert seen["config"].log_config is LOG_CONFIG and seen["lean"]
    assert seen["caller"] is not None


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "2"])
def test_digitlab_serve_logs_each_request_as_uvicorn_would(tmp_path, workers):
    """A real server's access lines, with its log written to a file (no colours), one
    process or two: the lines still held when it is stopped (it is stopped at once) are
    written as it shuts down."""
    drawing = np.full((140, 140), 255, np.uint8)
    drawing[30:110, 66:74] = 17
    log = (tmp_path / "serve.log").open("w+")
    proc = subprocess.Popen([sys.executable, "-m", "digitlab", "serve", "--port", "0",
                             "--workers", workers],
                            stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        base = None
        while base is None and proc.poll() is None:
            log.seek(0)
            first = log.readline()
            base = first.split()[2].rstrip("/") if first.endswith("\n") else None
        with httpx.Client(base_url=base, timeout=60) as client:
            assert client.post("/api/predict?top_k=2", content=write_grey(drawing)
                               ).status_code == 200
            assert client.post("/api/predict", content=b"not an image").status_code == 415
            assert client.get("/healthz").status_code == 200
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    finally:
        proc.kill()
    log.seek(0)
    lines = [line for line in log.read().splitlines() if " - \"" in line]
    assert sorted(line.split(" - ", 1)[1] for line in lines) == sorted([
        '"POST /api/predict?top_k=2 HTTP/1.1" 200 OK',
        '"POST /api/predict HTTP/1.1" 415 Unsupported Media Type',
        '"GET /healthz HTTP/1.1" 200 OK'])
    assert all(line.startswith("INFO:     127.0.0.1:") for line in lines)


class Recorded(io.StringIO):
    """A file-like stream that keeps each write it is given (flushes written through)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


def access_handler(stream) -> AccessHandler:
    handler = AccessHandler(stream)
    handler.setFormatter(AccessFormatter(UVICORN_FORMAT, use_colors=False))
    return handler


def test_to_a_file_access_lines_go_out_a_block_at_a_time(monkeypatch):
    """Whole lines, at most BLOCK characters a write, none lost, in order; none waits past
    FLUSH_S (a later line brings it out), and shutting down writes the rest."""
    stream = Recorded()
    handler = access_handler(stream)
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    handler.written = now[0]
    records = [access_record(logging.INFO, f"127.0.0.1:{k}", "POST", "/api/predict", 200)
               for k in range(300)]
    for record in records[:200]:
        handler.handle(record)
    assert stream.writes, "200 lines are more than a block"
    assert all(len(text) <= BLOCK and text.endswith("\n") for text in stream.writes)
    assert len(stream.writes) < 10  # not a write a line
    written = len(stream.writes)
    handler.handle(records[200])
    assert len(stream.writes) == written  # kept...
    now[0] += FLUSH_S
    handler.handle(records[201])
    assert len(stream.writes) == written + 1  # ... until FLUSH_S has passed
    for record in records[202:]:
        handler.handle(record)
    handler.flush()  # as logging.shutdown() does at exit
    handler.close()
    lines = stream.getvalue().splitlines()
    assert lines == [handler.format(record) for record in records]


def test_lines_no_later_line_brings_out_are_written_within_flush_s():
    read, write = os.pipe()
    with os.fdopen(write, "w") as stream, os.fdopen(read, "rb", buffering=0) as pipe:
        handler = access_handler(stream)
        handler.handle(access_record(logging.INFO, "127.0.0.1:1", "GET", "/healthz", 200))
        handler.handle(access_record(logging.INFO, "127.0.0.1:2", "GET", "/healthz", 200))
        ready, _, _ = select.select([pipe], [], [], 10 * FLUSH_S)
        assert ready, "the lines were not written"
        text = b""
        while text.count(b"\n") < 2:
            text += pipe.read(4096)
        handler.close()
    assert text.decode().splitlines()[1].endswith('"GET /healthz HTTP/1.1" 200 OK')


def test_to_a_terminal_each_line_goes_out_at_once():
    main, other = os.openpty()
    with os.fdopen(other, "w") as terminal, os.fdopen(main, "rb", buffering=0) as screen:
        handler = access_handler(terminal)
        handler.handle(access_record(logging.INFO, "127.0.0.1:1", "GET", "/", 200))
        ready, _, _ = select.select([screen], [], [], 0)  # written already, not later
        assert ready and b'"GET / HTTP/1.1" 200 OK' in screen.read(4096)
        handler.close()
