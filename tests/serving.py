"""A real `digitlab serve` process on 127.0.0.1 for tests that need the whole command."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


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
