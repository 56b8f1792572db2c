"""`digitlab serve --workers N`: N worker processes that share the connections evenly.

uvicorn's own multi-process mode lets every worker accept from the shared listening socket
as fast as its event loop comes round, so whichever worker is idle at the moment takes all
the connections arriving then. Keep-alive clients that connect together (a page's browser,
a proxy's connection pool, serve_load's 32 clients) split 32/0, 28/4 or 25/7 far more
often than evenly (ten rounds of 32 connections: 16/16 once), and every request on the
crowded worker waits for twice its share of reading.

Here each worker accepts on its own event loop, and only while it holds no more
connections than the least busy worker (their counts are in memory the workers share): new
connections go to the emptiest worker, so the split stays within one whatever the timing.
A connection nobody else takes within TAKE_OVER_S (the emptiest worker is busy) is taken
by whoever sees it; a worker that is gone, or still starting in place of one that died,
is not waited for. At start-up nothing is taken until every worker is ready (ALL_UP_S at
most): clients connecting to the first one up would otherwise all stay with it. The
parent starts the workers, starts another in place of one that dies, and stops them all
on Ctrl+C or SIGTERM. Only workers that die before they serve (a model that cannot load)
end the server; a worker whose parent is gone ends itself.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import multiprocessing
import os
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE

from digitlab.errors import DigitlabError
from digitlab.serve.logs import lean_records
from digitlab.serve.server import GRACE_S, Server, server_settings

TAKE_OVER_S = 0.05  # how long a waiting connection is left for an emptier worker
STEP_BACK_S = 0.001  # how soon a worker that stepped back looks again
RETRY_S = 0.1  # after accept() failed (too many open files...), before trying again
NOT_SERVING = 2**30  # the count of a worker still starting, or gone: nobody waits for it
ALL_UP_S = 30.0  # at start-up, how long the first workers wait for the others to be ready
START_FAILURES = 2  # workers in a row that die before serving end the server
PARENT_CHECK_S = 1.0  # how often a worker looks whether its parent is still there
PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent dies (Linux)

log = logging.getLogger("digitlab.serve")


class Counts:
    """Open connections per worker, in shared memory; each worker writes only its own. And
    whether each worker has served since it was started (the parent resets it)."""

    def __init__(self, workers: int, context: Any) -> None:
        self.shared = context.RawArray("i", [NOT_SERVING] * workers)
        self.served = context.RawArray("b", [0] * workers)

    def set(self, index: int, value: int) -> None:
        self.shared[index] = value

    def fewest_elsewhere(self, index: int) -> int | None:
        others = [v for k, v in enumerate(self.shared) if k != index]
        return min(others) if others else None


class BalancedServer(Server):
    """A uvicorn server whose connections come from an Acceptor instead of a listening
    socket of its own."""

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
                                 protocol)
        self.acceptor.start()
        self.counts.served[self.index] = 1

    async def shutdown(self, sockets: Sequence[socket.socket] | None = None) -> None:
        if self.acceptor is not None:
            self.acceptor.stop()
        await super().shutdown(sockets=None)


class Acceptor:
    """Accepts connections for one worker, on its event loop, while the worker holds no more
    of them than the least busy other worker.

    Every worker's loop hears of a waiting connection; the ones holding more step back and
    look again a millisecond later (the socket stays readable, so a loop that listened on
    would be called back over and over), and take it after TAKE_OVER_S."""

    def __init__(self, sock: socket.socket, counts: Counts, index: int,
                 loop: asyncio.AbstractEventLoop,
                 protocol: Callable[[], asyncio.Protocol]) -> None:
        self.sock, self.counts, self.index = sock, counts, index
        self.loop, self.protocol = loop, protocol
        self.open = 0  # this worker's connections (all counted on its loop)
        self.stepped_back: float | None = None  # since when a connection waits for others
        self.listening = False
        self.stopped = False

    def start(self) -> None:
        """Take connections once every worker is ready (or after ALL_UP_S): keep-alive
        clients connecting while only some are would all stay with those. A worker started
        in place of one that died finds the others serving and starts at once."""
        self.sock.setblocking(False)
        self.counts.set(self.index, 0)
        self._listen_when_all_up(time.monotonic())

    def _listen_when_all_up(self, since: float) -> None:
        if self.stopped:
            return
        if NOT_SERVING not in self.counts.shared[:] or time.monotonic() - since > ALL_UP_S:
            self._listen()
        else:
            self.loop.call_later(0.01, self._listen_when_all_up, since)

    def stop(self) -> None:
        self.stopped = True
        self._unlisten()
        self.counts.set(self.index, NOT_SERVING)

    def _listen(self) -> None:
        if not self.stopped and not self.listening:
            self.loop.add_reader(self.sock.fileno(), self._ready)
            self.listening = True

    def _unlisten(self) -> None:
        if self.listening:
            self.loop.remove_reader(self.sock.fileno())
            self.listening = False

    def _ready(self) -> None:
        """The listening socket has a connection waiting (for this worker or another)."""
        now = time.monotonic()
        fewest = self.counts.fewest_elsewhere(self.index)
        taking_over = False
        if fewest is not None and self.open > fewest:
            if self.stepped_back is None:
                self.stepped_back = now
            if now - self.stepped_back < TAKE_OVER_S:
                self._unlisten()
                self.loop.call_later(STEP_BACK_S, self._look_again)
                return
            taking_over = True  # nobody else took it: this one does
        self.stepped_back = None
        # Take what is waiting while this worker stays among the least busy (a burst of
        # connections is then taken a few at a time, not one per wake-up).
        while taking_over or fewest is None or self.open <= fewest:
            taking_over = False
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return  # nothing (more) waiting, or another worker took it
            except OSError as exc:  # e.g. out of file descriptors: pause, as asyncio does
                log.warning("accepting a connection failed: %s", exc)
                self._unlisten()
                self.loop.call_later(RETRY_S, self._listen)
                return
            self._count(+1)
            self.loop.create_task(self._serve(conn))
            fewest = self.counts.fewest_elsewhere(self.index)

    def _look_again(self) -> None:
        """After stepping back: listen again; if another worker took what was waiting,
        the next connection is a new wait."""
        if not _waiting(self.sock):
            self.stepped_back = None
        self._listen()

    def _count(self, change: int) -> None:
        self.open += change
        self.counts.set(self.index, self.open)

    async def _serve(self, conn: socket.socket) -> None:
        """Serve the connection as uvicorn would, counting it until it closes."""
        counted = [True]  # until connection_lost says otherwise

        def protocol() -> asyncio.Protocol:
            made = self.protocol()
            lost = made.connection_lost

            def connection_lost(exc: Exception | None) -> None:
                if counted[0]:
                    counted[0] = False
                    self._count(-1)
                lost(exc)

            made.connection_lost = connection_lost  # type: ignore[method-assign]
            return made

        try:
            await self.loop.connect_accepted_socket(protocol, conn)
        except OSError:  # the client left before it started
            conn.close()
            if counted[0]:
                counted[0] = False
                self._count(-1)


def _waiting(sock: socket.socket) -> bool:
    """Whether a connection waits on the listening socket (poll: select() stops at
    descriptor 1,024, which a busy server passes)."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    return bool(select.select([sock], [], [], 0)[0])


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
            args=(sock, counts, index, settings_env,
                  worker_config(host, port, workers, log_level, access_log), os.getpid()))
        process.start()
        return process

    stopping = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stopping.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    processes = [start(k) for k in range(workers)]
    failed = None
    try:
        failed = _supervise(processes, counts, start, stopping)
    finally:
        for process in processes:
            if process.exitcode is None and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)  # uvicorn's graceful shutdown
        for process in processes:
            process.join(GRACE_S + 5)
            if process.exitcode is None:
                process.kill()
                process.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if failed:
        raise DigitlabError(failed)


def _supervise(processes: list[Any], counts: Counts, start: Callable[[int], Any],
               stopping: threading.Event) -> str | None:
    """Start another worker in place of each that dies, until `stopping`; the reason to end
    the server instead (START_FAILURES workers in a row died before serving, or one
    reported that it could not start), or None. A worker that served and then died (killed,
    out of memory) is replaced whenever it happens."""
    failures = 0
    starting = set(range(len(processes)))  # workers not yet seen serving
    while not stopping.wait(0.5):
        for k, process in enumerate(processes):
            if process.exitcode is None:
                if k in starting and counts.served[k]:
                    starting.discard(k)
                    failures = 0  # "in a row": this one started
                continue
            counts.set(k, NOT_SERVING)
            if not counts.served[k]:
                failures += 1
                if process.exitcode == STARTUP_FAILURE or failures >= START_FAILURES:
                    return (f"a worker could not start (exit code {process.exitcode}): "
                            "see above")
                log.warning("worker %d (pid %s) ended before serving (exit code %s); "
                            "starting another", k, process.pid, process.exitcode)
            else:
                log.warning("worker %d (pid %s) ended (exit code %s); starting another", k,
                            process.pid, process.exitcode)
            counts.served[k] = 0
            processes[k] = start(k)
            starting.add(k)
    return None


def worker_config(host: str, port: int, workers: int, log_level: str,
                  access_log: bool) -> dict[str, Any]:
    """uvicorn.Config's arguments for each worker. `workers` is the whole server's count, as
    uvicorn's own worker processes have it: on Windows it then runs them on the selector
    event loop, which the Acceptor's add_reader needs (the proactor loop has none)."""
    return dict(app="digitlab.serve.run:app_from_env", factory=True, host=host, port=port,
                workers=workers, **server_settings(log_level, access_log))


def _worker(sock: socket.socket, counts: Counts, index: int, settings_env: tuple[str, str],
            config: dict[str, Any], parent: int) -> None:
    end_with_parent(parent)
    os.environ[settings_env[0]] = settings_env[1]
    lean_records()
    BalancedServer(uvicorn.Config(**config), sock, counts, index).run()


def end_with_parent(parent: int) -> None:
    """Have this process stopped (SIGTERM: uvicorn's graceful shutdown) once `parent` is no
    longer its parent: at once through prctl(PR_SET_PDEATHSIG) on Linux, and wherever else
    by a thread that looks every PARENT_CHECK_S. A worker left behind would keep serving
    and hold the port."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):  # no prctl: the thread alone
            pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_S)
        os.kill(os.getpid(), signal.SIGTERM)

    # Also after prctl: the parent may have gone before it was called.
    threading.Thread(target=watch, name="digitlab-parent-watch", daemon=True).start()
