"""A real `digitlab serve` process on 127.0.0.1 for tests that need the whole command."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Served:
    url: str
    proc: subprocess.Popen[str]
    output: list[str] = field(default_factory=list)  # all it printed, once stopped


@contextmanager
def digitlab_serve(*args: str) -> Iterator[Served]:
    """`digitlab serve --port 0 ARGS` until the block ends, then Ctrl+C; `.output` then holds
    everything it printed (its log)."""
    proc = subprocess.Popen([sys.executable, "-m", "digitlab", "serve", "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    served = Served("", proc)
    try:
        first = proc.stdout.readline()
        found = re.search(r"http://127\.0\.0\.1:\d+", first)
        assert found, first + proc.stdout.read()
        served.url = found.group(0)
        served.output.append(first)
        yield served
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        served.output.append(out)


def drawing() -> bytes:
    """A drawn 1 on white paper, as the page sends it."""
    from digitlab.vision.png import write_grey

    pixels = np.full((140, 140), 255, np.uint8)
    pixels[30:110, 66:74] = 17
    return write_grey(pixels)


@contextmanager
def in_thread(app: Any, join_s: float = 30, *, plain: bool = False
              ) -> Iterator[tuple[str, int]]:
    """digitlab's own uvicorn Server, with the settings `digitlab serve` gives it (limits,
    logging, a shutdown that answers every reader of the process), serving `app` on a free
    port of 127.0.0.1 in a thread; yields the address. plain: uvicorn's own Server instead,
    for tests that keep several servers in one process. Stopping waits up to join_s for the
    requests in flight."""
    import uvicorn

    from digitlab.serve import server as limits

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = (uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
              if plain else
              limits.Server(uvicorn.Config(app, **limits.server_settings("warning", False))))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield sock.getsockname()
    finally:
        server.should_exit = True
        thread.join(join_s)
        sock.close()
