"""Reading the images of many concurrent requests together, off the event loop.

The event loop only hands each request's image to a queue and waits. Reader threads take
every request waiting at that moment (up to max_batch), decode and preprocess each, read
the digits of all of them in one model call, turn each into its answer, and hand the lot
back to the event loop at once. What is much slower than a drawn digit goes to readers of
its own, the slow lane: a whole-number request (a hundred times slower) on its own, and the
single digits the quick way declines (a photo's lighting analysis, a JPEG's decoding: tens
of times slower) together; so no drawn digit waits for them, neither those taken with them
nor those queued after. Under load a thread hop, a wake-up of the event loop and a model
call are each paid once per batch instead of once or twice per request; an idle server
adds no waiting, since a lone request is read at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from digitlab.api import Prepared, Recognizer
from digitlab.serve.upload import RequestProblem

# Requests a reader takes at once; more waiting ones go to the next take. A batch is
# answered when all of it is read, so it bounds how long a request waits behind others:
# with a drawn digit at ~0.45 ms, 8 gave p99 below 16's in 6 of 8 alternated runs of
# serve_load (median 33.6 against 36.4 ms) for the same CPU per request.
MAX_BATCH = 8
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


@dataclass
class _Job:
    data: bytes
    number: bool
    top_k: int
    include_input: bool
    future: asyncio.Future[Reading]
    gone: bool = False  # the request was cancelled (its client left): skip it
    prepared: Prepared | None = None  # done ahead, the quick way


_STOP = None


class DigitReader:
    """`await reader(data, number=..., top_k=..., include_input=...)` -> Reading, or raises
    RequestProblem. `prepare(data, number)` decodes and preprocesses one image in a reader thread
    (raising RequestProblem for a bad one); the recognizer classifies and answers. `quick(data)`,
    when given, prepares a single digit the quick way or returns None (anything it raises
    counts as None): those, and whole numbers, are read by the slow lane's threads."""

    def __init__(self, recognizer: Recognizer, prepare: Callable[[bytes, bool], Prepared], *,
                 threads: int = 1, max_batch: int = MAX_BATCH,
                 quick: Callable[[bytes], Prepared | None] | None = None) -> None:
        if threads < 1 or max_batch < 1:
            raise ValueError(f"threads and max_batch must be at least 1, got {threads}, "
                             f"{max_batch}")
        self._recognizer = recognizer
        self._prepare = prepare
        self._quick = quick
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._serve, name=f"digitlab-reader-{k}",
                                          daemon=True) for k in range(threads)]
        # Groups of jobs for the slow lane: whole numbers one by one, the singles the quick
        # way declined together. As many threads as the quick lane's, so that pictures
        # that are all slow (a batch of photos) are read as many at once as before.
        self._slow: queue.SimpleQueue[list[_Job] | None] = queue.SimpleQueue()
        self._slow_lane = [threading.Thread(target=self._serve_slow, daemon=True,
                                            name=f"digitlab-reader-slow-{k}")
                           for k in range(threads)]
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for thread in [*self._threads, *self._slow_lane]:
            thread.start()

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
                       include_input: bool = False) -> Reading:
        if self._loop is None:
            raise RuntimeError("DigitReader.start() was not called")
        future: asyncio.Future[Reading] = self._loop.create_future()
        job = _Job(data, number, top_k, include_input, future)
        future.add_done_callback(lambda f: setattr(job, "gone", f.cancelled()))
        self._queue.put(job)
        return await future

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
            # Single digits (~0.3 ms each the quick way) are read together and answered at
            # once. The slow lane gets the rest, first so that it starts at once: each whole
            # number (~100 ms: many candidate cuts) on its own, and the singles the quick
            # way declined (a few to tens of ms each) together.
            singles = [j for j in batch if not j.number]
            if self._quick is None or len(singles) < 2:
                here, slow = singles, []  # a lone one waits for nothing; none is quick
            else:
                slow = self._prepare_quickly(singles)
                here = [j for j in singles if j.prepared is not None]
            for group in ([slow] if slow else []) + [[j] for j in batch if j.number]:
                self._slow.put(group)
            if not self._answer_group(here):
                return
            if stop:
                return

    def _serve_slow(self) -> None:
        while (group := self._slow.get()) is not None:
            if not self._answer_group(group):
                return

    def _prepare_quickly(self, singles: list[_Job]) -> list[_Job]:
        """Prepare what the quick way takes (job.prepared); the jobs it declines."""
        assert self._quick is not None
        later = []
        for job in singles:
            try:
                job.prepared = None if job.gone else self._quick(job.data)
            except Exception:  # the full way meets it again and answers for it
                job.prepared = None
            if job.prepared is None:
                later.append(job)
        return later

    def _answer_group(self, group: list[_Job]) -> bool:
        """Read a group and hand its answers to the event loop; False once the loop is gone."""
        live = [j for j in group if not j.gone]
        if not live:
            return True
        try:
            results = self.read(live)
        except Exception:  # a bug outside any one request: fail the group, keep serving
            log.exception("reading a batch of requests failed")
            results = [(j, RequestProblem(500, INTERNAL)) for j in live]
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(_deliver, results)
        except RuntimeError:  # the loop has closed: nobody is waiting any more
            return False
        return True

    def read(self, batch: list[_Job]) -> list[tuple[_Job, Reading | RequestProblem]]:
        """Every job's answer or problem; one job's bad image never touches the others."""
        results: list[tuple[_Job, Reading | RequestProblem]] = []
        ready: list[tuple[_Job, Prepared]] = []
        for job in batch:
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


def _deliver(results: list[tuple[_Job, Reading | RequestProblem]]) -> None:
    for job, result in results:
        if job.future.done():
            continue
        if isinstance(result, RequestProblem):
            job.future.set_exception(result)
        else:
            job.future.set_result(result)
