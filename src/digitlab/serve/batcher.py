"""Reading the images of many concurrent requests together, off the event loop.

The event loop only hands each request's image to a queue and waits. Reader threads take
every request waiting at that moment (up to max_batch), decode and preprocess each, read
the digits of all of them in one model call, turn each into its answer, and hand the lot
back to the event loop at once. What is much slower than a drawn digit goes to readers of
its own, the slow lane: each whole-number request (a hundred times slower) and each single
digit the quick way declines (a photo's lighting analysis, a JPEG's decoding: tens of times
slower) on its own, even a lone one; so no drawn digit waits for them, neither those taken
with them nor those queued after, and no slow image waits for another while a slow-lane
thread is free. The slow lane's threads bound how many images are
decoded at once. Under load a thread hop, a wake-up of the event loop and a model call are
each paid once per batch instead of once or twice per request.

Nobody waits for work nobody wants: a request whose client has gone (its ASGI `receive`
says `http.disconnect`) or whose deadline has passed is answered and its job skipped; both
queues are capped, and a request past a cap is answered 503 with Retry-After at once. When
the server stops, close() answers every request not yet started with a 503.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from starlette.exceptions import HTTPException
from starlette.types import Receive

from digitlab.api import Recognizer
from digitlab.inputs import Prepared
from digitlab.serve.upload import RequestProblem

# Requests a reader takes at once; more waiting ones go to the next take. A batch is
# answered when all of it is read, so it bounds how long a request waits behind others:
# in alternated serve_load runs, 8 gave a lower p99 than 16 for the same CPU per request.
MAX_BATCH = 8
# Requests waiting for the quick lane, and waiting for or in the slow lane: past these a
# request is answered 503 at once instead of waiting behind work the server cannot finish
# soon. The slow cap is small: each of those may take a good part of a second.
MAX_WAITING = 256
MAX_SLOW = 16
# How long a request may wait for its answer once its body is in; then it is answered 503
# and its job, if not started, skipped. The server's graceful shutdown is longer than this
# plus the time a body may take to arrive (serve/server.py), so every request in flight
# gets a JSON answer before the server stops.
DEADLINE_S = 10.0
# A request still unanswered this long after it was queued starts watching its client (a
# task reading ASGI `receive`); most requests are answered sooner and never pay for one.
WATCH_AFTER_S = 0.02
RETRY_AFTER_S = 1
INTERNAL = "internal error in digitlab (see the server log)"
# Starlette's JSONResponse rendering, made once (json.dumps builds an encoder every call
# when given any option); an answer holds no cycles to look for.
JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False, indent=None,
                        separators=(",", ":"), check_circular=False)

log = logging.getLogger("digitlab.serve")


@dataclass(frozen=True)
class Reading:
    """The answer to one request: the JSON body, already rendered, and whether the image
    held no digit (the answer then goes with a 422)."""

    body: bytes
    answer: dict[str, Any]
    blank: bool


def busy(why: str) -> HTTPException:
    """503 with Retry-After; the app answers it as JSON {"error": why, "detail": null}."""
    return HTTPException(503, why, headers={"Retry-After": str(RETRY_AFTER_S)})


@dataclass(eq=False)
class _Job:
    data: bytes
    number: bool
    top_k: int
    include_input: bool
    future: asyncio.Future[Reading]
    deadline: float  # time.monotonic() after which nobody waits for the answer
    gone: bool = False  # nobody waits for the answer (answered, client left): skip it
    started: bool = False  # a reader thread has begun reading it
    prepared: Prepared | None = None  # done ahead, the quick way
    watcher: asyncio.Task[None] | None = field(default=None, repr=False)

    def skip(self) -> bool:
        return self.gone or time.monotonic() > self.deadline


_STOP = None
_OPEN: weakref.WeakSet[DigitReader] = weakref.WeakSet()


def close_all() -> None:
    """DigitReader.close() for every reader of this process (the server stops: serve/server.py
    calls it as uvicorn's shutdown begins). On the event loop's thread."""
    for reader in list(_OPEN):
        reader.close()


class DigitReader:
    """`await reader(data, number=..., top_k=..., include_input=...)` -> Reading, or raises
    RequestProblem. `prepare(data, number)` decodes and preprocesses one image in a reader thread
    (raising RequestProblem for a bad one); the recognizer classifies and answers. `quick(data)`,
    when given, prepares a single digit the quick way or returns None (anything it raises
    counts as None): those, and whole numbers, are read by the slow lane's threads. Pass the
    request's ASGI `receive` to have the job skipped if its client leaves."""

    def __init__(self, recognizer: Recognizer, prepare: Callable[[bytes, bool], Prepared], *,
                 threads: int = 1, max_batch: int = MAX_BATCH,
                 quick: Callable[[bytes], Prepared | None] | None = None,
                 max_waiting: int = MAX_WAITING, max_slow: int = MAX_SLOW,
                 deadline_s: float = DEADLINE_S) -> None:
        if min(threads, max_batch, max_waiting, max_slow) < 1:
            raise ValueError(f"threads, max_batch, max_waiting and max_slow must be at least "
                             f"1, got {threads}, {max_batch}, {max_waiting}, {max_slow}")
        self._recognizer = recognizer
        self._prepare = prepare
        self._quick = quick
        self._max_batch = max_batch
        self._max_waiting, self._max_slow, self._deadline_s = max_waiting, max_slow, deadline_s
        self._jobs: set[_Job] = set()  # every request not yet answered (event loop only)
        self._closing = False
        self._slow_count = 0  # jobs handed to the slow lane and not yet read
        self._slow_lock = threading.Lock()
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._serve, name=f"digitlab-reader-{k}",
                                          daemon=True) for k in range(threads)]
        # Jobs for the slow lane, one by one (as one-job groups). As many threads as the
        # quick lane's, so that pictures that are all slow (a batch of photos) are read as
        # many at once as before; each reads one image at a time, which bounds the memory
        # decoding takes.
        self._slow: queue.SimpleQueue[list[_Job] | None] = queue.SimpleQueue()
        self._slow_lane = [threading.Thread(target=self._serve_slow, daemon=True,
                                            name=f"digitlab-reader-slow-{k}")
                           for k in range(threads)]
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for thread in [*self._threads, *self._slow_lane]:
            thread.start()
        _OPEN.add(self)

    def close(self) -> None:
        """Refuse new requests and answer those not yet started with a 503 (the server is
        stopping); those being read are answered as usual. On the event loop's thread."""
        self._closing = True
        for job in list(self._jobs):
            if not job.started:
                _give_up(job, busy("the server is shutting down"))

    def stop(self) -> None:
        """Let the readers finish what they hold, then end them (the slow lane last: it
        reads what they handed it)."""
        for _ in self._threads:
            self._queue.put(_STOP)
        for thread in self._threads:
            thread.join(30)
        for _ in self._slow_lane:
            self._slow.put(None)
        for thread in self._slow_lane:
            thread.join(30)

    def waiting(self) -> int:
        """Requests queued and not yet taken by a reader."""
        return self._queue.qsize()

    async def __call__(self, data: bytes, *, number: bool = False, top_k: int = 3,
                       include_input: bool = False, receive: Receive | None = None) -> Reading:
        loop = self._loop
        if loop is None:
            raise RuntimeError("DigitReader.start() was not called")
        if self._closing:
            raise busy("the server is shutting down")
        if len(self._jobs) >= self._max_waiting:
            raise busy("the server is busy: too many requests are waiting")
        future: asyncio.Future[Reading] = loop.create_future()
        job = _Job(data, number, top_k, include_input, future,
                   time.monotonic() + self._deadline_s)
        self._jobs.add(job)
        self._queue.put(job)
        guard = loop.call_later(WATCH_AFTER_S, self._watch, job, receive)
        try:
            return await future
        finally:
            job.gone = True  # answered, or nobody waits any more (the task was cancelled)
            self._jobs.discard(job)
            guard.cancel()
            if job.watcher is not None:
                job.watcher.cancel()

    def _watch(self, job: _Job, receive: Receive | None) -> None:
        if not job.future.done():
            job.watcher = asyncio.ensure_future(_until_gone(job, receive))

    # --- in the reader threads ----------------------------------------------------------

    def _serve(self) -> None:
        while True:
            job = self._queue.get()
            if job is _STOP:
                return
            batch = [job]
            stop = False
            while len(batch) < self._max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    stop = True
                    break
                batch.append(more)
            # Single digits read the quick way are read together and answered at once. The
            # slow lane gets the rest, first so that it starts at once: each whole number
            # (many candidate cuts: the slowest kind) and each single the quick way declined
            # (a photo's lighting, a JPEG's decoding).
            batch = [j for j in batch if not j.skip()]
            singles = [j for j in batch if not j.number]
            if self._quick is None:
                here, slow = singles, []  # no quick way: no way to tell the slow ones
            else:
                slow = self._prepare_quickly(singles)
                here = [j for j in singles if j.prepared is not None]
            refused: list[_Job] = []
            for group in [[j] for j in slow] + [[j] for j in batch if j.number]:
                taken = self._to_slow_lane(group)
                refused += group[len(taken):]
                if taken:
                    self._slow.put(taken)
            if refused and not self._hand_over(
                    [(j, busy("the server is busy: too many slow images are waiting"))
                     for j in refused]):
                return
            if not self._answer_group(here):
                return
            if stop:
                return

    def _to_slow_lane(self, group: list[_Job]) -> list[_Job]:
        """The first jobs of `group` the slow lane has room for (counted in)."""
        with self._slow_lock:
            room = max(0, self._max_slow - self._slow_count)
            taken = group[:room]
            self._slow_count += len(taken)
        return taken

    def _serve_slow(self) -> None:
        while (group := self._slow.get()) is not None:
            try:
                if not self._answer_group(group):
                    return
            finally:
                with self._slow_lock:
                    self._slow_count -= len(group)

    def _prepare_quickly(self, singles: list[_Job]) -> list[_Job]:
        """Prepare what the quick way takes (job.prepared); the jobs it declines."""
        assert self._quick is not None
        later = []
        for job in singles:
            job.started = True
            try:
                job.prepared = self._quick(job.data)
            except Exception:  # the full way meets it again and answers for it
                job.prepared = None
            if job.prepared is None:
                job.started = False  # not read yet: the slow lane will
                later.append(job)
        return later

    def _answer_group(self, group: list[_Job]) -> bool:
        """Read a group and hand its answers to the event loop; False once the loop is gone."""
        live = [j for j in group if not j.skip()]
        if not live:
            return True
        try:
            results = self.read(live)
        except Exception:  # a bug outside any one request: fail the group, keep serving
            log.exception("reading a batch of requests failed")
            results = [(j, RequestProblem(500, INTERNAL)) for j in live]
        return self._hand_over(results)

    def _hand_over(self, results: list[tuple[_Job, Reading | Exception]]) -> bool:
        """Answers to the event loop; False once the loop is gone."""
        if not results:
            return True
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(_deliver, results)
        except RuntimeError:  # the loop has closed: nobody is waiting any more
            return False
        return True

    def read(self, batch: list[_Job]) -> list[tuple[_Job, Reading | Exception]]:
        """Every job's answer or problem; one job's bad image never touches the others. A
        job whose client left (or whose deadline passed) while others were decoded is
        skipped."""
        results: list[tuple[_Job, Reading | Exception]] = []
        ready: list[tuple[_Job, Prepared]] = []
        for job in batch:
            if job.skip():
                continue
            job.started = True
            try:
                prepared = job.prepared
                if prepared is None:
                    prepared = self._prepare(job.data, job.number)
                ready.append((job, prepared))
            except RequestProblem as problem:
                results.append((job, problem))
            except Exception:
                log.exception("reading an uploaded image failed")
                results.append((job, RequestProblem(500, INTERNAL)))
        try:
            probs = self._recognizer.classify_prepared([prepared for _, prepared in ready])
        except Exception:
            log.exception("the model call failed")
            return results + [(job, RequestProblem(500, INTERNAL)) for job, _ in ready]
        at = 0
        for job, prepared in ready:
            rows = probs[at : at + len(prepared.inputs)]
            at += len(prepared.inputs)
            try:
                results.append((job, self._answer(job, prepared, rows)))
            except Exception:
                log.exception("answering a request failed")
                results.append((job, RequestProblem(500, INTERNAL)))
        return results

    def _answer(self, job: _Job, prepared: Prepared, probs: np.ndarray) -> Reading:
        prediction = self._recognizer.finish([prepared], probs, top_k=job.top_k)[0]
        answer = prediction.to_json(include_input=job.include_input)
        # Rendered here, as Starlette's JSONResponse would, so the event loop only sends it.
        body = JSON.encode(answer).encode("utf-8")
        return Reading(body, answer, prediction.blank)


def _deliver(results: list[tuple[_Job, Reading | Exception]]) -> None:
    for job, result in results:
        if job.future.done():
            continue
        if isinstance(result, Exception):
            job.future.set_exception(result)
        else:
            job.future.set_result(result)


def _give_up(job: _Job, problem: Exception) -> None:
    """Answer the job with `problem` now; a reader that meets it later skips it."""
    job.gone = True
    if not job.future.done():
        job.future.set_exception(problem)


async def _until_gone(job: _Job, receive: Receive | None) -> None:
    """Wait for the job's client to leave (answered as such) or its deadline (503); the
    request cancels this once it is answered. Only `http.disconnect` is awaited: the body
    has been read, so the server's receive has nothing else to give."""
    try:
        if receive is not None:
            message = await asyncio.wait_for(receive(), job.deadline - time.monotonic())
            if message["type"] == "http.disconnect":
                _give_up(job, RequestProblem(400, "the client disconnected", close=True))
                return
        await asyncio.sleep(max(0.0, job.deadline - time.monotonic()))
    except TimeoutError:
        pass
    _give_up(job, busy("the image could not be read in time"))
