"""Micro-batching: concurrent requests share a batch; a full queue refuses with 503."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from service.batching import MicroBatcher, Overloaded
from service.metrics import Metrics
from service.runtime import StageResult


def echo_batch(calls: list[int], gate: threading.Event | None = None):
    """A stand-in model: logits = the image's mean; records each batch's size."""

    def run(model, images, purify, classify):
        if gate is not None:
            gate.wait(5)
        calls.append(len(images))
        means = images.reshape(len(images), -1).mean(axis=1)
        return StageResult(
            logits=np.stack([means, -means], axis=1),
            classifier_spikes=np.arange(len(images), dtype=np.float32),
            timings={"classify": 0.001},
        )

    return run


def image(value: float, n: int = 1) -> np.ndarray:
    return np.full((n, 1, 4, 4), value, np.float32)


def test_concurrent_jobs_are_batched_and_answered_in_order():
    calls: list[int] = []

    async def main():
        batcher = MicroBatcher(
            echo_batch(calls), Metrics(), max_batch_size=8, batch_wait_ms=200, queue_size=16
        )
        batcher.start()
        try:
            jobs = [
                batcher.submit(image(v / 10, n), purify=False, classify=True, timeout=5)
                for v, n in [(1, 1), (2, 2), (3, 1), (4, 1)]
            ]
            return await asyncio.gather(*jobs)
        finally:
            await batcher.stop()

    results = asyncio.run(main())
    assert calls == [5]
    assert [r.batch_size for r in results] == [5, 5, 5, 5]
    # each job gets its own rows back
    rows = [r.result.logits[:, 0] for r in results]
    expected = [[0.1], [0.2, 0.2], [0.3], [0.4]]
    assert [len(r) for r in rows] == [1, 2, 1, 1]
    for got, want in zip(rows, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_batches_never_exceed_max_batch_size():
    calls: list[int] = []

    async def main():
        batcher = MicroBatcher(
            echo_batch(calls), Metrics(), max_batch_size=4, batch_wait_ms=100, queue_size=16
        )
        batcher.start()
        try:
            await asyncio.gather(
                *[
                    batcher.submit(image(0.5, 3), purify=False, classify=True, timeout=5)
                    for _ in range(3)
                ]
            )
        finally:
            await batcher.stop()

    asyncio.run(main())
    assert calls == [3, 3, 3]


def test_full_queue_is_refused_at_once():
    calls: list[int] = []
    gate = threading.Event()

    async def main():
        batcher = MicroBatcher(
            echo_batch(calls, gate), Metrics(), max_batch_size=1, batch_wait_ms=0, queue_size=2
        )
        batcher.start()
        try:
            running = asyncio.ensure_future(
                batcher.submit(image(0.1), purify=False, classify=True, timeout=5)
            )
            await asyncio.sleep(0.1)  # the worker has taken it and is blocked in the model
            queued = [
                asyncio.ensure_future(
                    batcher.submit(image(0.2), purify=False, classify=True, timeout=5)
                )
                for _ in range(2)
            ]
            await asyncio.sleep(0)
            start = time.perf_counter()
            with pytest.raises(Overloaded):
                await batcher.submit(image(0.3), purify=False, classify=True, timeout=5)
            refused_after = time.perf_counter() - start
            gate.set()
            await asyncio.gather(running, *queued)
            return refused_after
        finally:
            gate.set()
            await batcher.stop()

    assert asyncio.run(main()) < 1.0
    assert calls == [1, 1, 1]


def test_timed_out_job_is_skipped():
    calls: list[int] = []
    gate = threading.Event()

    async def main():
        batcher = MicroBatcher(
            echo_batch(calls, gate), Metrics(), max_batch_size=1, batch_wait_ms=0, queue_size=4
        )
        batcher.start()
        try:
            blocked = asyncio.ensure_future(
                batcher.submit(image(0.1), purify=False, classify=True, timeout=5)
            )
            await asyncio.sleep(0.1)
            with pytest.raises(TimeoutError):
                await batcher.submit(image(0.2), purify=False, classify=True, timeout=0.05)
            gate.set()
            await blocked
        finally:
            gate.set()
            await batcher.stop()

    asyncio.run(main())
    assert calls == [1]


def run_with_both_streams_held(max_batch_size: int, queued: list[float]):
    """Two streams: one job each, both held inside the model together (each waits for the
    other at a barrier, which one stream would never pass); then ``queued`` jobs arrive
    while both are busy, and the streams are let go. Returns (batch sizes in the order the
    streams took them, each job's result)."""
    calls: list[int] = []
    taken: list[int] = []
    barrier = threading.Barrier(2, timeout=5)
    gate = threading.Event()
    first_two = threading.Semaphore(2)

    def run(model, images, purify, classify):
        taken.append(len(images))
        if first_two.acquire(blocking=False):
            barrier.wait()
            gate.wait(5)
        return echo_batch(calls)(model, images, purify, classify)

    async def main():
        batcher = MicroBatcher(
            run, Metrics(), max_batch_size=max_batch_size, batch_wait_ms=0, queue_size=16,
            streams=2,
        )  # fmt: skip
        batcher.start()

        def submit(v: float) -> asyncio.Future:
            return asyncio.ensure_future(
                batcher.submit(image(v), purify=False, classify=True, timeout=5)
            )

        try:
            jobs = [submit(0.0)]
            await asyncio.sleep(0.05)  # the first stream took it alone
            jobs.append(submit(0.1))
            await asyncio.sleep(0.05)  # the second stream took this one
            jobs += [submit(v) for v in queued]
            await asyncio.sleep(0.05)
            gate.set()
            return await asyncio.gather(*jobs)
        finally:
            gate.set()
            await batcher.stop()

    results = asyncio.run(main())
    return taken, results


def test_streams_run_batches_at_once():
    """Two batches run at once, and the jobs that queued meanwhile go out in shares: the
    first stream to come free takes 2 of the 3, the next one the rest."""
    taken, results = run_with_both_streams_held(4, [0.2, 0.3, 0.4])
    assert taken[:2] == [1, 1] and sorted(taken[2:]) == [1, 2], taken
    for v, result in enumerate(results):
        np.testing.assert_allclose(result.result.logits[:, 0], [v / 10], rtol=1e-6)


def test_streams_share_the_queue():
    """Eight jobs queue while both streams are busy: the first stream to come free takes
    its half (4), not all 8 (max_batch_size 32), and leaves the rest to the other."""
    taken, _ = run_with_both_streams_held(32, [0.5] * 8)
    assert taken[:3] == [1, 1, 4], taken  # with one stream (or a wait) the third would be 8
    assert sum(taken) == 10 and max(taken[3:]) <= 4, taken


def test_stop_answers_the_jobs_of_running_batches():
    gate = threading.Event()

    async def main():
        batcher = MicroBatcher(
            echo_batch([], gate), Metrics(), max_batch_size=1, batch_wait_ms=0, queue_size=4,
            streams=2,
        )  # fmt: skip
        batcher.start()
        jobs = [
            asyncio.ensure_future(
                batcher.submit(image(0.1), purify=False, classify=True, timeout=5)
            )
            for _ in range(3)
        ]
        await asyncio.sleep(0.1)  # two running, one queued
        stopping = asyncio.ensure_future(batcher.stop())
        await asyncio.sleep(0.1)
        gate.set()  # the model threads return; stop() waits for them
        await stopping
        return await asyncio.gather(*jobs, return_exceptions=True)

    outcomes = asyncio.run(main())
    assert all(isinstance(o, Overloaded) for o in outcomes), outcomes


def test_stop_ends_streams_that_wait_for_company():
    """A batch being gathered through a long wait: stop() ends at once and answers its job
    (it is neither queued nor running)."""

    async def main():
        batcher = MicroBatcher(
            echo_batch([]), Metrics(), max_batch_size=8, batch_wait_ms=20_000, queue_size=4,
            streams=2,
        )  # fmt: skip
        batcher.start()
        job = asyncio.ensure_future(
            batcher.submit(image(0.1), purify=False, classify=True, timeout=30)
        )
        await asyncio.sleep(0.1)  # taken, waiting 20 s for company
        start = time.perf_counter()
        await asyncio.wait_for(batcher.stop(), 5)
        stopped_after = time.perf_counter() - start
        outcome = await asyncio.gather(job, return_exceptions=True)
        return stopped_after, outcome[0]

    stopped_after, outcome = asyncio.run(main())
    assert stopped_after < 2
    assert isinstance(outcome, Overloaded), outcome


def test_full_queue_answers_503_with_retry_after(make_client, fashion_png):
    """Over HTTP: the model (one stream) is held busy, so the one queue slot fills and the
    next request is refused instead of waiting."""
    client = make_client(queue_size=1, max_batch_size=1, batch_wait_ms=0, inference_streams=1)
    batcher = client.app.state.service.batcher
    real_run = batcher._run_batch
    entered, gate = threading.Event(), threading.Event()

    def slow_run(*args):
        entered.set()
        gate.wait(10)
        return real_run(*args)

    batcher._run_batch = slow_run
    responses: list = []

    def post():
        responses.append(client.post("/classify", files={"file": ("x.png", fashion_png)}))

    threads = [threading.Thread(target=post) for _ in range(2)]
    threads[0].start()
    assert entered.wait(10), "the first request never reached the model"
    threads[1].start()
    deadline = time.monotonic() + 10
    while batcher.depth < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    refused = client.post("/classify", files={"file": ("x.png", fashion_png)})
    gate.set()
    for t in threads:
        t.join(10)
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "queue_full"
    assert int(refused.headers["Retry-After"]) >= 1
    assert sorted(r.status_code for r in responses) == [200, 200]
    assert (
        'spikeguard_rejected_requests_total{reason="queue_full"} 1.0' in client.get("/metrics").text
    )


def test_inference_timeout_answers_503(make_client, fashion_png):
    client = make_client(inference_timeout_s=0.2)
    batcher = client.app.state.service.batcher
    real_run = batcher._run_batch
    gate = threading.Event()

    def stuck_run(*args):
        gate.wait(10)
        return real_run(*args)

    batcher._run_batch = stuck_run
    try:
        response = client.post("/classify", files={"file": ("x.png", fashion_png)})
    finally:
        gate.set()
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "inference_timeout"
    assert response.headers["Retry-After"]
    batcher._run_batch = real_run
    assert client.post("/classify", files={"file": ("x.png", fashion_png)}).status_code == 200


def test_a_free_stream_starts_its_next_batch_while_the_event_loop_is_busy():
    """The streams take their batches themselves: with the event loop blocked (as when it
    answers one batch and reads the next requests), a stream that finishes a batch starts
    the next queued one at once instead of waiting for the loop to hand it over."""
    started: list[float] = []
    gate = threading.Event()

    def run(model, images, purify, classify):
        started.append(time.perf_counter())
        if len(started) == 1:
            gate.wait(5)
        return echo_batch([])(model, images, purify, classify)

    async def main():
        batcher = MicroBatcher(
            run, Metrics(), max_batch_size=1, batch_wait_ms=0, queue_size=8, streams=1
        )
        batcher.start()
        try:
            jobs = [
                asyncio.ensure_future(
                    batcher.submit(image(v), purify=False, classify=True, timeout=5)
                )
                for v in (0.1, 0.2, 0.3)
            ]
            while not started:  # the first batch is held in the model, two jobs queue
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
            gate.set()
            time.sleep(0.5)  # the event loop is busy (blocked) for half a second
            unblocked = time.perf_counter()
            results = await asyncio.gather(*jobs)
            return unblocked, results
        finally:
            gate.set()
            await batcher.stop()

    unblocked, results = asyncio.run(main())
    assert len(started) == 3
    assert started[2] < unblocked, "the queued batches waited for the event loop"
    for v, result in zip((0.1, 0.2, 0.3), results, strict=True):
        np.testing.assert_allclose(result.result.logits[:, 0], [v], rtol=1e-6)


def test_a_failed_batch_answers_its_jobs_and_the_stream_goes_on():
    calls: list[int] = []
    echo = echo_batch(calls)

    def run(model, images, purify, classify):
        if not calls:
            calls.append(-1)
            raise ValueError("the model failed on this batch")
        return echo(model, images, purify, classify)

    async def main():
        batcher = MicroBatcher(
            run, Metrics(), max_batch_size=1, batch_wait_ms=0, queue_size=4, streams=1
        )
        batcher.start()
        try:
            first = batcher.submit(image(0.1), purify=False, classify=True, timeout=5)
            second = batcher.submit(image(0.2), purify=False, classify=True, timeout=5)
            return await asyncio.gather(first, second, return_exceptions=True)
        finally:
            await batcher.stop()

    failed, served = asyncio.run(main())
    assert isinstance(failed, ValueError), failed
    np.testing.assert_allclose(served.result.logits[:, 0], [0.2], rtol=1e-6)
    assert calls == [-1, 1]
