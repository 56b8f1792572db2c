"""`digitlab serve --workers N`: N worker processes that share the connections evenly.

uvicorn's own multi-process mode lets every worker accept from the shared listening socket
as fast as its event loop comes round, so whichever worker is idle at the moment takes all
the connections arriving then. Keep-alive clients that connect together (a page's browser,
a proxy's connection pool, serve_load's 32 clients) split 32/0, 28/4 or 25/7 far more
often than evenly (ten rounds of 32 connections: 16/16 once), and every request on the
crowded worker waits for twice its share of reading.

Here each worker accepts in a thread of its own, and only while it holds no more
connections than the least busy worker (their counts are in memory the workers share): new
connections go to the emptiest worker, so the split stays within one whatever the timing.
A connection nobody else takes within TAKE_OVER_S (the emptiest worker is busy, or gone)
is taken by whoever sees it. The parent starts the workers, starts another in place of one
that dies, and stops them all on Ctrl+C or SIGTERM.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import select
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE

from digitlab.errors import DigitlabError

TAKE_OVER_S = 0.05  # how long a waiting connection is left for an emptier worker
STOP_CHECK_S = 0.2  # how often an idle acceptor looks whether the server is stopping
QUICK_EXIT_S = 10.0  # a worker that ends this soon after starting, twice, ends the server

log = logging.getLogger("digitlab.serve")


class Counts:
    """Open connections per worker, in shared memory; each worker writes only its own."""

    def __init__(self, workers: int, context: Any) -> None:
        self.shared = context.RawArray("i", workers)

    def set(self, index: int, value: int) -> None:
        self.shared[index] = value

    def fewest_elsewhere(self, index: int) -> int | None:
        others = [v for k, v in enumerate(self.shared) if k != index]
        return min(others) if others else None


class BalancedServer(uvicorn.Server):
    """A uvicorn server that takes its connections from an Acceptor thread instead of
    listening itself."""

    def __init__(self, config: uvicorn.Config, sock: socket.socket, counts: Counts,
                 index: int) -> None:
        super().__init__(config)
        self.sock, self.counts, self.index = sock, counts, index
        self.acceptor: Acceptor | None = None

    async def startup(self, sockets: Sequence[socket.socket] | None = None) -> None:
        await super().startup(sockets=[])  # the app's start-up; no listening socket
        if self.should_exit:
            return
        config = self.config
        # What uvicorn's own create_server would make for each connection.
        protocol = partial(config.http_protocol_class, config=config,  # type: ignore[call-arg]
                           server_state=self.server_state, app_state=self.lifespan.state)
        self.acceptor = Acceptor(self.sock, self.counts, self.index, asyncio.get_running_loop(),
                                 protocol, self.server_state.connections)
        self.acceptor.start()

    async def shutdown(self, sockets: Sequence[socket.socket] | None = None) -> None:
        if self.acceptor is not None:
            self.acceptor.stop()
        await super().shutdown(sockets=None)


class Acceptor(threading.Thread):
    """Accepts connections for one worker while it is (one of) the least busy, and hands
    them to its event loop."""

    def __init__(self, sock: socket.socket, counts: Counts, index: int,
                 loop: asyncio.AbstractEventLoop, protocol: Callable[[], asyncio.Protocol],
                 connections: set[Any]) -> None:
        super().__init__(name=f"digitlab-acceptor-{index}", daemon=True)
        self.sock, self.counts, self.index = sock, counts, index
        self.loop, self.protocol, self.connections = loop, protocol, connections
        self.handed = 0  # connections handed to the loop (this thread counts)
        self.started = 0  # ... and started there (the loop counts)
        self.stopping = threading.Event()

    def stop(self) -> None:
        self.stopping.set()
        self.join(2 * STOP_CHECK_S + 1)

    def open(self) -> int:
        """This worker's connections: open ones, and those handed over but not started."""
        return len(self.connections) + self.handed - self.started

    def run(self) -> None:
        self.sock.setblocking(False)
        waiting_since: float | None = None
        while not self.stopping.is_set():
            mine = self.open()
            self.counts.set(self.index, mine)
            ready, _, _ = select.select([self.sock], [], [], STOP_CHECK_S)
            if not ready:
                waiting_since = None
                continue
            fewest = self.counts.fewest_elsewhere(self.index)
            now = time.monotonic()
            if fewest is not None and mine > fewest:
                # An emptier worker should take it; take it anyway once it has waited.
                waiting_since = waiting_since or now
                if now - waiting_since < TAKE_OVER_S:
                    time.sleep(0.001)
                    continue
            waiting_since = None
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                continue  # another worker took it
            except OSError as exc:
                if self.stopping.is_set():
                    return
                log.warning("accepting a connection failed: %s", exc)
                time.sleep(STOP_CHECK_S)
                continue
            self.handed += 1
            self.counts.set(self.index, self.open())
            try:
                self.loop.call_soon_threadsafe(self._start, conn)
            except RuntimeError:  # the loop has closed
                conn.close()
                return

    def _start(self, conn: socket.socket) -> None:
        """On the event loop: serve the connection as uvicorn would."""

        async def serve() -> None:
            try:
                await self.loop.connect_accepted_socket(self.protocol, conn)
            except OSError:
                conn.close()  # the client left before it started
            finally:
                self.started += 1

        self.loop.create_task(serve())


def run_workers(sock: socket.socket, workers: int, *, settings_env: tuple[str, str],
                log_level: str = "info", access_log: bool = True) -> None:
    """Serve on `sock` with `workers` processes until Ctrl+C or SIGTERM.

    settings_env: the (name, value) of the environment variable that tells each worker's
    app factory its settings (run.app_from_env)."""
    context = multiprocessing.get_context("spawn")
    counts = Counts(workers, context)
    host, port = sock.getsockname()[:2]

    def start(index: int) -> Any:
        process = context.Process(
            target=_worker, name=f"digitlab-worker-{index}",
            args=(sock, counts, index, settings_env, host, port, log_level, access_log))
        process.start()
        return process

    stopping = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stopping.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    processes = [start(k) for k in range(workers)]
    began = [time.monotonic()] * workers
    quick_exits = 0
    failed = None
    try:
        while not stopping.wait(0.5):
            for k, process in enumerate(processes):
                if process.exitcode is None:
                    continue
                counts.set(k, 0)
                quick = time.monotonic() - began[k] < QUICK_EXIT_S
                quick_exits += quick
                if process.exitcode == STARTUP_FAILURE or quick_exits >= 2:
                    failed = f"a worker could not start (exit code {process.exitcode}): see above"
                    stopping.set()
                    break
                log.warning("worker %d (pid %s) ended (exit code %s); starting another", k,
                            process.pid, process.exitcode)
                processes[k], began[k] = start(k), time.monotonic()
    finally:
        for process in processes:
            if process.exitcode is None and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)  # uvicorn's graceful shutdown
        for process in processes:
            process.join(15)
            if process.exitcode is None:
                process.kill()
                process.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if failed:
        raise DigitlabError(failed)


def _worker(sock: socket.socket, counts: Counts, index: int, settings_env: tuple[str, str],
            host: str, port: int, log_level: str, access_log: bool) -> None:
    os.environ[settings_env[0]] = settings_env[1]
    config = uvicorn.Config("digitlab.serve.run:app_from_env", factory=True, host=host,
                            port=port, log_level=log_level, access_log=access_log,
                            timeout_graceful_shutdown=5)
    BalancedServer(config, sock, counts, index).run()
