"""serve/workers.py's Acceptor on its own: one worker's side of sharing connections evenly
(the whole server, with two real workers, is tested in test_serve_api.py)."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import processes
from digitlab.serve import workers
from digitlab.serve.workers import NOT_SERVING, TAKE_OVER_S, Acceptor, Counts


class Held(asyncio.Protocol):
    """Keeps the connection open, as an idle keep-alive client's."""


async def accepted_within(acceptor: Acceptor, clients: list[socket.socket], count: int,
                          seconds: float) -> bool:
    """Whether `count` more connections are open on the acceptor's side within `seconds`."""
    want = acceptor.open + count
    for _ in range(count):
        client = socket.socket()
        client.setblocking(False)
        with contextlib.suppress(BlockingIOError):  # connecting goes on in the background
            client.connect(acceptor.sock.getsockname())
        clients.append(client)
    deadline = time.monotonic() + seconds
    while acceptor.open < want and time.monotonic() < deadline:
        await asyncio.sleep(0.002)
    return acceptor.open >= want


def test_a_worker_takes_connections_while_it_is_the_least_busy_and_otherwise_waits() -> None:
    counts = Counts(2, multiprocessing.get_context("spawn"))
    assert list(counts.shared) == [NOT_SERVING, NOT_SERVING]  # nobody serving yet
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    clients: list[socket.socket] = []

    async def main() -> None:
        acceptor = Acceptor(listener, counts, 0, asyncio.get_running_loop(), Held)
        acceptor.start()
        assert counts.shared[0] == 0
        # At start-up nothing is taken until the other worker is ready too ...
        assert not await accepted_within(acceptor, clients, 5, 0.2)
        counts.set(1, 0)
        await asyncio.sleep(TAKE_OVER_S / 2)
        assert acceptor.open == 1 == counts.shared[0]  # ... then no more than it, for now
        # Once serving, a worker that is gone (or being replaced) is not waited for.
        counts.set(1, NOT_SERVING)
        while acceptor.open < 5:
            await asyncio.sleep(0.002)
        assert counts.shared[0] == 5
        # The other holds fewer: this one steps back, then takes over after TAKE_OVER_S.
        counts.set(1, 2)
        started = time.monotonic()
        assert not await accepted_within(acceptor, clients, 1, TAKE_OVER_S / 2)
        while acceptor.open < 6 and time.monotonic() - started < 2:
            await asyncio.sleep(0.002)
        assert acceptor.open == 6 and time.monotonic() - started >= TAKE_OVER_S * 0.9
        # As many as the other: no waiting.
        counts.set(1, 6)
        assert await accepted_within(acceptor, clients, 1, TAKE_OVER_S / 2)
        # Another worker takes what waits while this one steps back: its next wait is new.
        counts.set(1, 0)
        other = socket.socket()
        other.connect(listener.getsockname())
        await asyncio.sleep(0.005)  # this one has stepped back
        taken, _ = listener.accept()  # "the other worker" takes it
        await asyncio.sleep(TAKE_OVER_S * 1.5)
        counts.set(1, 7)
        assert await accepted_within(acceptor, clients, 1, TAKE_OVER_S / 2)
        counts.set(1, 0)
        assert not await accepted_within(acceptor, clients, 1, TAKE_OVER_S / 2)
        taken.close()
        other.close()
        while acceptor.open < 9 and time.monotonic() - started < 5:
            await asyncio.sleep(0.002)  # taken over in the end
        assert acceptor.open == 9
        # Connections that close are counted out.
        for client in clients[:3]:
            client.close()
        deadline = time.monotonic() + 2
        while acceptor.open > 6 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert acceptor.open == counts.shared[0] == 6
        acceptor.stop()
        assert counts.shared[0] == NOT_SERVING

    try:
        asyncio.run(asyncio.wait_for(main(), 30))
    finally:
        for client in clients:
            client.close()
        listener.close()


def test_a_failing_accept_pauses_instead_of_spinning(monkeypatch) -> None:
    """accept() failing (out of file descriptors, say) is retried after RETRY_S, not on
    every turn of the loop while the connection waits."""
    counts = Counts(1, multiprocessing.get_context("spawn"))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    calls = []

    class Failing:
        def __init__(self, sock: socket.socket) -> None:
            self.sock = sock

        def accept(self) -> tuple[socket.socket, object]:
            calls.append(time.monotonic())
            if len(calls) <= 2:
                raise OSError(24, "Too many open files")
            return self.sock.accept()

        def __getattr__(self, name: str) -> object:
            return getattr(self.sock, name)

    client = socket.socket()

    async def main() -> None:
        acceptor = Acceptor(Failing(listener), counts, 0,  # type: ignore[arg-type]
                            asyncio.get_running_loop(), Held)
        acceptor.start()
        client.connect(listener.getsockname())
        deadline = time.monotonic() + 5
        while acceptor.open < 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert acceptor.open == 1
        assert len(calls) >= 3 and calls[2] - calls[0] >= 2 * workers.RETRY_S * 0.9
        acceptor.stop()

    try:
        asyncio.run(asyncio.wait_for(main(), 30))
    finally:
        client.close()
        listener.close()


def test_workers_run_on_the_event_loop_uvicorn_gives_its_own_workers() -> None:
    """Each worker's uvicorn.Config counts every worker, as uvicorn's own worker processes
    do: on Windows that is the selector loop, which has the add_reader the Acceptor uses."""
    import uvicorn

    config = uvicorn.Config(**workers.worker_config("127.0.0.1", 8000, 2, "info", False))
    assert config.workers == 2 and config.use_subprocess
    assert config.factory and not config.access_log


# --- the whole server, `digitlab serve --workers 2`, as a real process ------------------------


@contextlib.contextmanager
def two_workers() -> Iterator[tuple[subprocess.Popen, str, Path]]:
    """`digitlab serve --workers 2` on a free port, its URL and its log file; stopped (and
    killed, with whatever it left) at the end."""
    log = Path(tempfile.mkstemp(prefix="digitlab-serve-", suffix=".log")[1])
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "digitlab", "serve", "--port", "0",
                                 "--workers", "2", "--no-access-log"],
                                stdout=out, stderr=subprocess.STDOUT, text=True)
    left: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while not (found := re.search(r"http://127\.0\.0\.1:\d+", log.read_text())):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        wait_for(lambda: serving(log) == 2, log)
        left = workers_of(proc.pid)
        yield proc, found.group(0), log
    finally:
        for pid in [proc.pid, *left, *workers_of(proc.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(30)
        log.unlink()


def workers_of(parent: int) -> list[int]:
    """The worker processes of `digitlab serve` (not multiprocessing's resource tracker)."""
    return [pid for pid, ppid, args in processes() if ppid == parent and "spawn_main" in args]


def serving(log: Path) -> int:
    """How many workers have come up so far (uvicorn logs each one's start-up)."""
    return log.read_text().count("Application startup complete")


def wait_for(condition, log: Path, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)


def healthy(url: str) -> bool:
    with contextlib.suppress(OSError), \
            urllib.request.urlopen(url + "/healthz", timeout=30) as answer:
        return answer.status == 200
    return False


@pytest.mark.slow
def test_a_serving_worker_killed_three_times_quickly_is_replaced_each_time() -> None:
    """Each kill hits the worker started in place of the last one, as soon as it serves:
    deaths of workers that served never end the server."""
    with two_workers() as (proc, url, log):
        for kill in range(3):
            victim = workers_of(proc.pid)[0]
            os.kill(victim, signal.SIGKILL)
            wait_for(lambda n=kill: serving(log) == 3 + n, log)
        assert proc.poll() is None, log.read_text()
        assert healthy(url)
        text = log.read_text()
        assert text.count("ended (exit code -9); starting another") == 3
        assert "could not start" not in text


@pytest.mark.slow
def test_workers_end_with_their_parent_and_free_the_port() -> None:
    with two_workers() as (proc, url, _log):
        port = int(url.rsplit(":", 1)[1])
        left = workers_of(proc.pid)
        assert len(left) == 2 and healthy(url)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        deadline = time.monotonic() + 10
        while [pid for pid in left if Path(f"/proc/{pid}").exists()]:
            assert time.monotonic() < deadline, "workers outlived their parent"
            time.sleep(0.1)
        with socket.socket() as again:  # nobody listens on the port any more
            again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            again.bind(("127.0.0.1", port))
            again.listen()


def test_a_worker_that_ends_itself_when_its_parent_is_gone() -> None:
    """end_with_parent in a process whose parent is not the one named: it is stopped by
    SIGTERM at once (the check that runs wherever prctl does not)."""
    code = ("import time; from digitlab.serve.workers import end_with_parent; "
            "end_with_parent(1); time.sleep(30)")
    began = time.monotonic()
    ended = subprocess.run([sys.executable, "-c", code], timeout=60)
    assert ended.returncode == -signal.SIGTERM
    assert time.monotonic() - began < 30
