"""DigitReader: concurrent requests read together in reader threads, off the event loop."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import numpy as np
import pytest
from starlette.exceptions import HTTPException

from digitlab.api import Recognizer
from digitlab.inputs import Prepared
from digitlab.serve.batcher import MAX_BATCH, DigitReader, close_all
from digitlab.serve.upload import RequestProblem

INFO = {"classes": list(range(10)), "model": "fake"}


class FakeModel:
    """Answers each 28x28 input with its pixel value as the digit; the first `hold` calls
    wait for `release`, so a test can queue requests behind a call in progress."""

    def __init__(self, hold: int = 0, fail_first: bool = False) -> None:
        self.calls: list[list[int]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.hold = hold
        self.fail_first = fail_first

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.calls.append([int(v) for v in images[:, 0, 0]])
        self.entered.set()
        if len(self.calls) <= self.hold:
            assert self.release.wait(30)
        if self.fail_first and len(self.calls) == 1:
            raise RuntimeError("model broke")
        probs = np.full((len(images), 10), 0.01, np.float32)
        probs[np.arange(len(images)), images[:, 0, 0]] = 0.91
        return probs


def prepare(data: bytes, number: bool) -> Prepared:
    """b"3" is an image of a 3; b"blank" holds no digit; b"bad" is not an image; b"boom"
    breaks digitlab."""
    if data == b"bad":
        raise RequestProblem(415, "not an image")
    if data == b"boom":
        raise RuntimeError("a bug")
    if data == b"blank":
        return Prepared(None, [], number=number)
    return Prepared(None, [np.full((28, 28), int(data), np.uint8)], number=number)


def reader_for(model: FakeModel, **kwargs) -> DigitReader:
    return DigitReader(Recognizer(model, info=INFO), prepare, **kwargs)


async def until(condition, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


def reading(reader: DigitReader, work):
    """What the async function `work` returns, run with the reader started and stopped
    after it, whatever happens."""

    async def run():
        reader.start()
        try:
            return await work()
        finally:
            await asyncio.to_thread(reader.stop)

    return asyncio.run(run())


async def held(reader: DigitReader, model: FakeModel) -> asyncio.Future:
    """A first request (the digit 1), sent and held inside the model call."""
    first = asyncio.ensure_future(reader(b"1"))
    await until(model.entered.is_set)
    return first


async def behind_a_held_call(reader: DigitReader, model: FakeModel, datas: list[bytes],
                             **kwargs) -> list:
    """Answers for `datas`, all queued while the reader is stuck in a first model call."""
    reader.start()
    try:
        first = asyncio.ensure_future(reader(b"0"))
        await until(model.entered.is_set)
        rest = [asyncio.ensure_future(reader(d, **kwargs)) for d in datas]
        await until(lambda: reader.waiting() == len(datas))
        model.release.set()
        await first
        return list(await asyncio.gather(*rest, return_exceptions=True))
    finally:
        await asyncio.to_thread(reader.stop)


def test_waiting_requests_are_read_in_one_model_call_and_answered_in_order() -> None:
    model = FakeModel(hold=1)
    reader = reader_for(model)
    queued = [b"%d" % (k % 10) for k in range(MAX_BATCH)]
    answers = asyncio.run(behind_a_held_call(reader, model, queued, top_k=2))
    # The first request alone, then the ones that queued behind it (a full batch) together.
    assert model.calls == [[0], [k % 10 for k in range(MAX_BATCH)]]
    for k, reading in enumerate(answers):
        assert reading.answer["digit"] == k % 10
        assert len(reading.answer["top_k"]) == 2
        assert json.loads(reading.body) == reading.answer  # rendered once, in the thread
        assert not reading.blank


def test_numbers_are_read_in_the_slow_lane_and_no_digit_waits_for_them() -> None:
    """Each whole number is read on its own by the slow lane; the digits taken with it, and
    one sent while it is still being read, are answered meanwhile."""
    model = FakeModel(hold=1)
    number_held, number_released = threading.Event(), threading.Event()

    def prepare_holding(data: bytes, number: bool) -> Prepared:
        if number and data == b"2":
            number_held.set()
            assert number_released.wait(30)
        return prepare(data, number)

    reader = DigitReader(Recognizer(model, info=INFO), prepare_holding)

    async def main() -> tuple[list, list]:
        first = asyncio.ensure_future(reader(b"0"))
        await until(model.entered.is_set)
        jobs = [asyncio.ensure_future(reader(d, number=n)) for d, n in
                [(b"1", False), (b"2", True), (b"3", False), (b"4", True), (b"5", False)]]
        await until(lambda: reader.waiting() == 5)
        model.release.set()
        await first
        await until(number_held.is_set)
        digits = await asyncio.wait_for(asyncio.gather(*jobs[::2]), 10)
        digits.append(await asyncio.wait_for(reader(b"6"), 10))
        assert not jobs[1].done() and not jobs[3].done()
        number_released.set()
        return digits, list(await asyncio.gather(jobs[1], jobs[3]))

    digits, numbers = reading(reader, main)
    assert [a.answer["digit"] for a in digits] == [1, 3, 5, 6]
    assert [a.answer["number"] for a in numbers] == ["2", "4"]
    assert sorted(model.calls) == [[0], [1, 3, 5], [2], [4], [6]]


def test_the_slow_lane_reads_as_many_at_once_as_the_quick_one() -> None:
    """With two readers, two whole numbers are read at the same time (each waits here for
    the other to start), as two readers read them before there was a slow lane."""
    together = threading.Barrier(2, timeout=10)

    def prepare_together(data: bytes, number: bool) -> Prepared:
        if number:
            together.wait()
        return prepare(data, number)

    reader = DigitReader(Recognizer(FakeModel(), info=INFO), prepare_together, threads=2)

    async def main() -> list:
        return list(await asyncio.wait_for(asyncio.gather(
            reader(b"2", number=True), reader(b"4", number=True)), 30))

    assert [a.answer["number"] for a in reading(reader, main)] == ["2", "4"]


def test_singles_the_quick_way_declines_are_read_in_the_slow_lane() -> None:
    """b"slow7" is a picture only the slow way reads (a photo): it goes to the slow lane,
    whose reading of it waits here until the quick ones taken with it are answered (they
    never wait for it), and it is read in a model call of its own."""
    model = FakeModel(hold=1)
    answered = threading.Event()
    quick_ones: list[asyncio.Future] = []
    prepared_late: list[bytes] = []

    def quick(data: bytes) -> Prepared | None:
        if data.startswith(b"slow") or data == b"bad":
            return None
        return prepare(data, False)

    def slow_way(data: bytes, number: bool) -> Prepared:
        if data.startswith(b"slow"):
            # Without the quick way first, this runs before the batch is answered.
            assert answered.wait(30), "the quick answers were not delivered first"
            prepared_late.append(data)
            return prepare(data[4:], number)
        return prepare(data, number)

    reader = DigitReader(Recognizer(model, info=INFO), slow_way, quick=quick)

    async def main() -> list:
        first = asyncio.ensure_future(reader(b"0"))
        await until(model.entered.is_set)
        jobs = [asyncio.ensure_future(reader(d)) for d in (b"1", b"slow7", b"bad", b"5")]
        quick_ones.extend([jobs[0], jobs[3]])
        for job in quick_ones:
            job.add_done_callback(
                lambda _: all(j.done() for j in quick_ones) and answered.set())
        await until(lambda: reader.waiting() == 4)
        model.release.set()
        await first
        return list(await asyncio.gather(*jobs, return_exceptions=True))

    answers = reading(reader, main)
    assert model.calls == [[0], [1, 5], [7]]
    assert prepared_late == [b"slow7"]
    assert [a.answer["digit"] for a in (answers[0], answers[1], answers[3])] == [1, 7, 5]
    assert isinstance(answers[2], RequestProblem) and answers[2].status == 415


def test_a_lone_request_is_prepared_once() -> None:
    model = FakeModel()
    calls: list[bytes] = []
    full: list[bytes] = []

    def quick(data: bytes) -> Prepared | None:
        calls.append(data)
        return prepare(data, False)

    def full_way(data: bytes, number: bool) -> Prepared:
        full.append(data)
        return prepare(data, number)

    reader = DigitReader(Recognizer(model, info=INFO), full_way, quick=quick)

    async def main():
        return await reader(b"4")

    assert reading(reader, main).answer["digit"] == 4
    assert calls == [b"4"] and full == []  # the quick way took it: not read again


def test_a_lone_slow_picture_is_read_in_the_slow_lane_and_drawings_pass_it() -> None:
    """Two slow pictures sent alone (each its own batch) go to the slow lane, whose reading
    of them is held here: drawings sent meanwhile are answered by the quick lane at once."""
    model = FakeModel()
    release = threading.Event()
    slow_threads: set[str] = set()

    def quick(data: bytes) -> Prepared | None:
        return None if data.startswith(b"slow") else prepare(data, False)

    def slow_way(data: bytes, number: bool) -> Prepared:
        if data.startswith(b"slow"):
            slow_threads.add(threading.current_thread().name)
            assert release.wait(30)
            return prepare(data[4:], number)
        return prepare(data, number)

    reader = DigitReader(Recognizer(model, info=INFO), slow_way, quick=quick, threads=2)

    async def main() -> list:
        reader.start()
        try:
            slow = []
            for k in (6, 7):
                slow.append(asyncio.ensure_future(reader(b"slow%d" % k)))
                await until(lambda: len(slow_threads) == len(slow))
            drawn = [(await asyncio.wait_for(reader(b"%d" % k), 10)).answer["digit"]
                     for k in range(5)]
            assert not any(f.done() for f in slow)
            release.set()
            return drawn + [(await f).answer["digit"] for f in slow]
        finally:
            release.set()
            await asyncio.to_thread(reader.stop)

    assert asyncio.run(main()) == [0, 1, 2, 3, 4, 6, 7]
    assert all(name.startswith("digitlab-reader-slow") for name in slow_threads)


def test_a_job_whose_client_left_is_skipped() -> None:
    """Requests whose `receive` says http.disconnect while they wait are answered at once
    and their images never read; the one whose client stays is read."""
    model = FakeModel(hold=1)
    reader = reader_for(model)

    async def main() -> tuple:
        reader.start()
        left = asyncio.Event()

        async def leaving() -> dict:
            await left.wait()
            return {"type": "http.disconnect"}

        async def staying() -> dict:
            await asyncio.sleep(60)
            return {"type": "http.disconnect"}

        try:
            first = asyncio.ensure_future(reader(b"1"))
            await until(model.entered.is_set)
            gone = [asyncio.ensure_future(reader(b"2", receive=leaving)) for _ in range(6)]
            kept = asyncio.ensure_future(reader(b"3", receive=staying))
            await asyncio.sleep(0.1)  # past WATCH_AFTER_S: the clients are watched
            left.set()
            problems = await asyncio.gather(*gone, return_exceptions=True)
            model.release.set()
            return problems, await first, await kept
        finally:
            await asyncio.to_thread(reader.stop)

    problems, first, kept = asyncio.run(main())
    assert all(isinstance(p, RequestProblem) and p.status == 400 for p in problems)
    assert [first.answer["digit"], kept.answer["digit"]] == [1, 3]
    assert model.calls == [[1], [3]]  # the six left before being read: never read


def test_a_request_past_its_deadline_is_a_503_and_its_image_is_not_read() -> None:
    model = FakeModel(hold=1)
    reader = reader_for(model, deadline_s=0.3)

    async def main() -> tuple:
        first = await held(reader, model)
        late = await asyncio.gather(reader(b"2"), return_exceptions=True)
        model.release.set()
        await asyncio.gather(first, return_exceptions=True)  # held past its deadline too
        return late[0], await reader(b"4")

    late, after = reading(reader, main)
    assert isinstance(late, HTTPException) and late.status_code == 503
    assert late.headers == {"Retry-After": "1"}
    assert after.answer["digit"] == 4
    assert [2] not in model.calls


def test_a_full_queue_answers_503_at_once() -> None:
    model = FakeModel(hold=1)
    reader = reader_for(model, max_waiting=3)

    async def main() -> list:
        first = await held(reader, model)
        queued = [asyncio.ensure_future(reader(b"%d" % k)) for k in (2, 3)]
        await until(lambda: reader.waiting() == 2)
        with pytest.raises(HTTPException) as refused:
            await reader(b"9")
        assert refused.value.status_code == 503
        assert refused.value.headers["Retry-After"] == "1"
        model.release.set()
        return [(await f).answer["digit"] for f in (first, *queued)]

    assert reading(reader, main) == [1, 2, 3]


def test_a_full_slow_lane_answers_503_and_drawings_still_pass() -> None:
    release = threading.Event()

    def quick(data: bytes) -> Prepared | None:
        return None if data.startswith(b"slow") else prepare(data, False)

    def slow_way(data: bytes, number: bool) -> Prepared:
        if data.startswith(b"slow"):
            assert release.wait(30)
            return prepare(data[4:], number)
        return prepare(data, number)

    reader = DigitReader(Recognizer(FakeModel(), info=INFO), slow_way, quick=quick,
                         max_slow=2)

    async def main() -> tuple:
        reader.start()
        try:
            held = [asyncio.ensure_future(reader(b"slow%d" % k)) for k in (5, 6)]
            await asyncio.sleep(0.1)
            refused = await asyncio.gather(reader(b"slow7"), return_exceptions=True)
            drawn = await asyncio.wait_for(reader(b"3"), 10)
            release.set()
            return refused[0], drawn, [(await f).answer["digit"] for f in held]
        finally:
            release.set()
            await asyncio.to_thread(reader.stop)

    refused, drawn, held = asyncio.run(main())
    assert isinstance(refused, HTTPException) and refused.status_code == 503
    assert drawn.answer["digit"] == 3 and held == [5, 6]


def test_close_answers_the_jobs_not_started_with_503_and_refuses_new_ones() -> None:
    model = FakeModel(hold=1)
    reader = reader_for(model)

    async def main() -> tuple:
        running = asyncio.ensure_future(reader(b"1"))
        await until(model.entered.is_set)
        queued = [asyncio.ensure_future(reader(b"%d" % k)) for k in (2, 3)]
        await until(lambda: reader.waiting() == 2)
        close_all()
        skipped = await asyncio.gather(*queued, return_exceptions=True)
        late = await asyncio.gather(reader(b"4"), return_exceptions=True)
        model.release.set()
        return await running, skipped, late[0]

    running, skipped, late = reading(reader, main)
    assert running.answer["digit"] == 1  # the one being read is answered as usual
    for problem in [*skipped, late]:
        assert isinstance(problem, HTTPException) and problem.status_code == 503
    assert model.calls == [[1]]  # the two not started were never read


def test_max_batch_splits_a_long_queue() -> None:
    model = FakeModel(hold=1)
    reader = reader_for(model, max_batch=3)
    answers = asyncio.run(behind_a_held_call(reader, model, [b"%d" % k for k in range(7)]))
    assert [len(c) for c in model.calls] == [1, 3, 3, 1]
    assert [a.answer["digit"] for a in answers] == list(range(7))


def test_a_bad_image_fails_its_own_request_only() -> None:
    model = FakeModel(hold=1)
    reader = reader_for(model)
    good, bad, boom, blank, also = asyncio.run(behind_a_held_call(
        reader, model, [b"4", b"bad", b"boom", b"blank", b"7"]))
    assert good.answer["digit"] == 4 and also.answer["digit"] == 7
    assert isinstance(bad, RequestProblem) and bad.status == 415
    assert isinstance(boom, RequestProblem) and boom.status == 500
    assert "internal error" in boom.error
    assert blank.blank and blank.answer["digit"] is None
    assert model.calls[1] == [4, 7]  # only the good images reached the model


def test_a_failing_model_call_fails_its_requests_only() -> None:
    model = FakeModel(hold=1, fail_first=True)
    reader = reader_for(model)

    async def main() -> tuple[BaseException, list]:
        first = await held(reader, model)
        second = asyncio.ensure_future(reader(b"2"))
        model.release.set()
        failed = await asyncio.gather(first, return_exceptions=True)
        return failed[0], [await second, await reader(b"3")]

    failed, later = reading(reader, main)
    assert isinstance(failed, RequestProblem) and failed.status == 500
    assert [r.answer["digit"] for r in later] == [2, 3]


def test_a_bug_outside_any_request_fails_its_batch_and_the_reader_goes_on(monkeypatch) -> None:
    reader = reader_for(FakeModel())
    real = reader.read
    broken = [True]

    def read_once_broken(batch):
        if broken.pop() if broken else False:
            raise RuntimeError("a bug")
        return real(batch)

    monkeypatch.setattr(reader, "read", read_once_broken)

    async def main() -> tuple[BaseException, int]:
        failed = (await asyncio.gather(reader(b"1"), return_exceptions=True))[0]
        return failed, (await asyncio.wait_for(reader(b"2"), 30)).answer["digit"]

    failed, later = reading(reader, main)
    assert isinstance(failed, RequestProblem) and failed.status == 500
    assert later == 2  # the same reader thread still serves


def test_a_cancelled_request_is_skipped() -> None:
    model = FakeModel(hold=1)
    reader = reader_for(model)

    async def main() -> list:
        first = await held(reader, model)
        gone = asyncio.ensure_future(reader(b"2"))
        kept = asyncio.ensure_future(reader(b"3"))
        await until(lambda: reader.waiting() == 2)
        gone.cancel()
        await asyncio.sleep(0)  # the cancellation reaches the job
        model.release.set()
        return [await first, await kept]

    answers = reading(reader, main)
    assert [a.answer["digit"] for a in answers] == [1, 3]
    assert model.calls == [[1], [3]]  # the cancelled request's image was never read


def test_a_second_reader_answers_while_the_first_is_busy() -> None:
    model = FakeModel(hold=1)
    reader = reader_for(model, threads=2)

    async def main() -> int:
        stuck = asyncio.ensure_future(reader(b"1"))
        await until(model.entered.is_set)
        answer = await asyncio.wait_for(reader(b"5"), 30)  # while reader 1 is held
        assert not stuck.done()
        model.release.set()
        await stuck
        return answer.answer["digit"]

    assert reading(reader, main) == 5


def test_stop_ends_the_reader_threads() -> None:
    reader = reader_for(FakeModel(), threads=3)

    async def main() -> None:
        reader.start()
        assert (await reader(b"8")).answer["digit"] == 8
        await asyncio.to_thread(reader.stop)

    asyncio.run(main())
    assert not [t for t in threading.enumerate() if t.name.startswith("digitlab-reader")]


def test_calling_before_start_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="start"):
        asyncio.run(reader_for(FakeModel())(b"1"))


@pytest.mark.parametrize("kwargs", [{"threads": 0}, {"max_batch": 0}, {"max_waiting": 0},
                                    {"max_slow": 0}])
def test_threads_and_max_batch_must_be_positive(kwargs) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        reader_for(FakeModel(), **kwargs)
