"""ModelBatcher: the model call shared by concurrent requests."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from digitlab.serve.batcher import ModelBatcher


def images(n: int, value: int) -> np.ndarray:
    return np.full((n, 28, 28), value, np.uint8)


def fake_model(calls: list[int]):
    """Probabilities whose first column is each image's pixel value, so answers can be
    traced back to the request they belong to."""
    def classify(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        out = np.zeros((len(batch), 10), np.float32)
        out[:, 0] = batch[:, 0, 0]
        return out
    return classify


def test_waiting_requests_are_read_together_and_answered_in_order() -> None:
    calls: list[int] = []
    batcher = ModelBatcher(fake_model(calls))

    async def main() -> list[np.ndarray]:
        return await asyncio.gather(*(batcher(images(k % 3 + 1, k)) for k in range(8)))

    results = asyncio.run(main())
    # All eight queued before the model thread started: one call for their 15 images.
    # (Requests arriving while a call runs wait for the next one: see test_serve_api.)
    assert calls == [15]
    for k, probs in enumerate(results):
        assert probs.shape == (k % 3 + 1, 10)
        assert (probs[:, 0] == k).all()


def test_max_batch_splits_a_long_queue() -> None:
    calls: list[int] = []
    batcher = ModelBatcher(fake_model(calls), max_batch=4)

    async def main() -> list[np.ndarray]:
        return await asyncio.gather(*(batcher(images(2, k)) for k in range(6)))

    results = asyncio.run(main())
    assert calls == [4, 4, 4]
    assert [int(r[0, 0]) for r in results] == list(range(6))


def test_a_failing_model_call_fails_its_requests_only() -> None:
    calls: list[int] = []
    model = fake_model(calls)

    def flaky(batch: np.ndarray) -> np.ndarray:
        if len(calls) == 0:
            calls.append(-1)
            raise RuntimeError("model broke")
        return model(batch)

    batcher = ModelBatcher(flaky)

    async def main() -> tuple[list, np.ndarray]:
        first = await asyncio.gather(batcher(images(1, 1)), batcher(images(1, 2)),
                                     return_exceptions=True)
        return first, await batcher(images(1, 3))

    first, later = asyncio.run(main())
    # Both requests of the failed call get the error (neither hangs); the next one works.
    assert [type(e) for e in first] == [RuntimeError, RuntimeError]
    assert float(later[0, 0]) == 3.0


def test_a_cancelled_request_is_skipped() -> None:
    calls: list[int] = []
    batcher = ModelBatcher(fake_model(calls))

    async def main() -> np.ndarray:
        first = asyncio.ensure_future(batcher(images(1, 1)))
        gone = asyncio.ensure_future(batcher(images(5, 2)))
        kept = asyncio.ensure_future(batcher(images(1, 3)))
        await asyncio.sleep(0)  # all three are queued
        gone.cancel()
        await first
        return await kept

    assert float(asyncio.run(main())[0, 0]) == 3.0
    assert calls == [2]  # the cancelled request's five images were never classified


def test_a_cancelled_request_takes_no_place_in_the_batch() -> None:
    calls: list[int] = []
    batcher = ModelBatcher(fake_model(calls), max_batch=4)

    async def main() -> list[np.ndarray]:
        first = asyncio.ensure_future(batcher(images(2, 1)))
        gone = asyncio.ensure_future(batcher(images(2, 2)))
        kept = asyncio.ensure_future(batcher(images(2, 3)))
        await asyncio.sleep(0)  # all three are queued
        gone.cancel()
        return [await first, await kept]

    answers = asyncio.run(main())
    assert [float(a[0, 0]) for a in answers] == [1.0, 3.0]
    assert calls == [4]  # one call: the cancelled request's place went to the next one


def test_max_batch_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        ModelBatcher(fake_model([]), max_batch=0)
