"""The server's access log: uvicorn's own lines, from digitlab's quicker formatter, and the
serving processes set up to use it."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys

import httpx
import numpy as np
import pytest
import uvicorn
from uvicorn.config import LOGGING_CONFIG
from uvicorn.logging import AccessFormatter as UvicornAccessFormatter

from digitlab.serve import run as serve_run
from digitlab.serve import workers
from digitlab.serve.logs import LOG_CONFIG, AccessFormatter
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
    for name in ("logThreads", "logProcesses", "logMultiprocessing", "_srcfile"):
        monkeypatch.setattr(logging, name, getattr(logging, name))  # put back afterwards
    config = uvicorn.Config(**workers.worker_config("127.0.0.1", 8000, 2, "info", True))
    assert config.log_config is LOG_CONFIG and config.access_log
    seen = {}

    def run(server, sockets=None):
        seen["config"] = server.config
        seen["lean"] = not (logging.logThreads or logging.logProcesses) and not logging._srcfile
        for sock in sockets or ():
            sock.close()

    monkeypatch.setattr(uvicorn.Server, "run", run)
    serve_run.serve(run=None, host="127.0.0.1", port=0, workers=1, max_bytes=2**20,
                    report=lambda line: None)
    assert seen["config"].log_config is LOG_CONFIG and seen["lean"]


@pytest.mark.slow
def test_digitlab_serve_logs_each_request_as_uvicorn_would(tmp_path):
    """A real server's access lines, with its log written to a file (no colours)."""
    drawing = np.full((140, 140), 255, np.uint8)
    drawing[30:110, 66:74] = 17
    log = (tmp_path / "serve.log").open("w+")
    proc = subprocess.Popen([sys.executable, "-m", "digitlab", "serve", "--port", "0"],
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
    assert [line.split(" - ", 1)[1] for line in lines] == [
        '"POST /api/predict?top_k=2 HTTP/1.1" 200 OK',
        '"POST /api/predict HTTP/1.1" 415 Unsupported Media Type',
        '"GET /healthz HTTP/1.1" 200 OK']
    assert all(line.startswith("INFO:     127.0.0.1:") for line in lines)
