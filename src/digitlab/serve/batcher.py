"""One model call for the digits of many concurrent requests.

Requests are decoded and preprocessed in worker threads; their 28x28 inputs then queue
here. While the model reads one batch, the inputs of the next requests gather, and the
model reads them all in its next call. Under load the model's cost per image falls to a
fraction of a one-image call; an idle server adds no waiting, since a lone request is
classified at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import anyio
import numpy as np

MAX_BATCH = 256  # images per model call; more waiting inputs go in the next call


class ModelBatcher:
    """`await batcher(images)`: probabilities for uint8 [N, 28, 28], classified together with
    whatever other requests are waiting. The model runs in one thread, one call at a time."""

    def __init__(self, classify: Callable[[np.ndarray], np.ndarray], *,
                 max_batch: int = MAX_BATCH) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self._classify = classify
        self._max_batch = max_batch
        self._waiting: list[tuple[np.ndarray, asyncio.Future[np.ndarray]]] = []
        # At most one runner, so at most one model call, at a time.
        self._runner: asyncio.Task[None] | None = None

    async def __call__(self, images: np.ndarray) -> np.ndarray:
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._waiting.append((images, future))
        if self._runner is None:
            self._runner = asyncio.create_task(self._run())
        return await future

    async def _run(self) -> None:
        try:
            while self._waiting:
                batch = self._take()
                if not batch:
                    continue
                stacked = np.concatenate([images for images, _ in batch])
                try:
                    probs = await anyio.to_thread.run_sync(self._classify, stacked)
                except Exception as exc:  # every waiting request gets the error, none hangs
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                at = 0
                for images, future in batch:
                    if not future.done():
                        future.set_result(probs[at : at + len(images)])
                    at += len(images)
        finally:
            self._runner = None

    def _take(self) -> list[tuple[np.ndarray, asyncio.Future[np.ndarray]]]:
        """The oldest waiting requests, up to max_batch images (at least one request while
        any is left). A request whose client went away was cancelled: it is dropped here,
        so its images neither run nor take a place in the batch."""
        self._waiting = [(images, future) for images, future in self._waiting
                         if not future.done()]
        count, size = 0, 0
        for images, _ in self._waiting:
            if count and size + len(images) > self._max_batch:
                break
            count, size = count + 1, size + len(images)
        batch, self._waiting = self._waiting[:count], self._waiting[count:]
        return batch
