"""Dynamic micro-batching.

Requests put a ``Job`` (one or more images and what to do with them) on a bounded queue
and await its future. One worker task waits for a free inference stream, takes the first
waiting job, gathers more until the batch holds ``max_batch_size`` images or
``batch_wait_ms`` has passed since the first was taken, and runs the batch on the stream's
thread, so the event loop keeps accepting and decoding requests meanwhile. ``streams``
batches run at once, each on its own thread (the sessions are shared: ONNX Runtime runs
one session from several threads): on CPU the bare pipeline runs faster as one batch per
thread, one ORT thread each, than as one batch split over all threads
(``docs/benchmarks.md``). While every stream is busy, jobs queue
and form the next batch. A full queue refuses new jobs at once (``Overloaded``) instead of
letting latency grow without bound.

A job names the model it runs on (the ``Runtime`` its request started with): a batch holds
jobs of one model only, so a reload that swaps the model never runs a request's images
through another model than the one whose class names and version answer it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .metrics import Metrics
from .runtime import StageResult

log = logging.getLogger("spikeguard.batching")


class Overloaded(Exception):
    """The queue is full; the client should retry later."""


@dataclass
class Job:
    images: np.ndarray  # [n, C, H, W] float32 in [0, 1]
    purify: bool
    classify: bool
    future: asyncio.Future = field(repr=False)
    model: Any = field(default=None, repr=False)  # run_batch's first argument
    enqueued: float = field(default_factory=time.perf_counter)

    @property
    def size(self) -> int:
        return len(self.images)


@dataclass
class JobResult:
    result: StageResult  # this job's rows only
    batch_size: int  # images in the batch the job ran in
    queue_seconds: float


# run_batch(model, images [n, C, H, W], purify mask [n], classify mask [n])
RunBatch = Callable[[Any, np.ndarray, np.ndarray, np.ndarray], StageResult]


class MicroBatcher:
    def __init__(
        self,
        run_batch: RunBatch,
        metrics: Metrics,
        *,
        max_batch_size: int,
        batch_wait_ms: float,
        queue_size: int,
        streams: int = 1,
    ):
        self._run_batch = run_batch
        self._metrics = metrics
        self.max_batch_size = max_batch_size
        self._wait = batch_wait_ms / 1000.0
        self._queue: asyncio.Queue[Job] = asyncio.Queue(maxsize=queue_size)
        self._carried: Job | None = None  # taken from the queue but did not fit the last batch
        self._forming: list[Job] = []  # the batch being gathered
        self._queued_images = 0  # in the jobs on the queue and the carried one
        self.streams = streams
        self._free = asyncio.Semaphore(streams)  # streams not running a batch
        self._executor = ThreadPoolExecutor(max_workers=streams, thread_name_prefix="inference")
        self._task: asyncio.Task | None = None
        self._batches: dict[asyncio.Task, list[Job]] = {}  # running, with their jobs

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._worker(), name="batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        running = list(self._batches.items())
        for task, _ in running:
            task.cancel()
        await asyncio.gather(*(task for task, _ in running), return_exceptions=True)
        in_flight = [job for _, jobs in running for job in jobs] + self._forming
        for job in in_flight + self._drain():
            if not job.future.done():
                job.future.set_exception(Overloaded("the service is shutting down"))
        self._executor.shutdown(wait=True)

    def _drain(self) -> list[Job]:
        jobs = [self._carried] if self._carried else []
        self._carried = None
        while not self._queue.empty():
            jobs.append(self._queue.get_nowait())
        self._queued_images = 0
        return jobs

    @property
    def depth(self) -> int:
        return self._queue.qsize() + (1 if self._carried else 0)

    async def submit(
        self,
        images: np.ndarray,
        *,
        purify: bool,
        classify: bool,
        timeout: float,
        model: Any = None,
    ) -> JobResult:
        """Queues ``images`` to run on ``model`` and waits for their results. Raises
        ``Overloaded`` when the queue is full and ``TimeoutError`` after ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        job = Job(images, purify, classify, future, model)
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            raise Overloaded(
                f"the inference queue is full ({self._queue.maxsize} waiting)"
            ) from None
        self._queued_images += job.size
        self._metrics.queue_depth.set(self.depth)
        # on timeout the job's future fails, and the worker skips it (a bare timer: about
        # a third of what ``asyncio.timeout``'s context costs per request)
        timer = loop.call_later(timeout, _expire, future)
        try:
            return await future
        finally:
            timer.cancel()

    async def _next_job(self, deadline: float | None) -> Job | None:
        """The next job, waiting until ``deadline`` (forever if None); None at the deadline."""
        job = await self._take_job(deadline)
        if job is not None:
            self._queued_images -= job.size
        return job

    async def _take_job(self, deadline: float | None) -> Job | None:
        """``_next_job`` but for the count of queued images.

        ``asyncio.timeout`` rather than ``wait_for``: on Python 3.11, ``wait_for`` swallows
        a cancellation that arrives as the queue hands over an item, and ``stop()`` would
        then wait forever."""
        if self._carried is not None:
            job, self._carried = self._carried, None
            return job
        if deadline is None:
            return await self._queue.get()
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            try:
                return self._queue.get_nowait()
            except asyncio.QueueEmpty:
                return None
        try:
            async with asyncio.timeout(remaining):
                return await self._queue.get()
        except TimeoutError:
            return None

    def _share(self, first: Job) -> int:
        """The images this batch may take: ``max_batch_size``, and with several streams and
        no batch wait no more than an even share of the queued images (its first job's
        included), so that the next stream to come free finds the rest instead of one batch
        taking everything while the other streams idle; on CPU one thread runs a small
        batch about as fast per image as a big one (docs/benchmarks.md)."""
        if self.streams == 1 or self._wait > 0:  # a wait asks for company: up to the cap
            return self.max_batch_size
        queued = first.size + self._queued_images
        share = -(-queued // self.streams)  # ceil
        return max(1, min(self.max_batch_size, share))

    async def _gather(self) -> list[Job]:
        first = await self._next_job(None)
        jobs, images = [first], first.size
        self._forming = jobs
        limit = self._share(first)
        deadline = time.perf_counter() + self._wait
        while images < limit:
            job = await self._next_job(deadline)
            if job is None:
                break
            if images + job.size > limit or job.model is not first.model:
                self._carried = job
                self._queued_images += job.size
                break
            jobs.append(job)
            images += job.size
        self._forming = []
        return [job for job in jobs if not job.future.done()]

    async def _worker(self) -> None:
        while True:
            await self._free.acquire()
            try:
                jobs = await self._gather()
            except BaseException:
                self._free.release()
                raise
            self._metrics.queue_depth.set(self.depth)
            if not jobs:
                self._free.release()
                continue
            task = asyncio.get_running_loop().create_task(self._run(jobs), name="batch")
            self._batches[task] = jobs
            task.add_done_callback(self._batches.pop)

    async def _run(self, jobs: list[Job]) -> None:
        """Runs one batch on a free stream's thread and answers its jobs."""
        try:
            started = time.perf_counter()
            images = np.concatenate([job.images for job in jobs]) if len(jobs) > 1 else None
            images = jobs[0].images if images is None else images
            purify = np.repeat([job.purify for job in jobs], [job.size for job in jobs])
            classify = np.repeat([job.classify for job in jobs], [job.size for job in jobs])
            self._metrics.batch_size.observe(len(images))
            try:
                result = await asyncio.get_running_loop().run_in_executor(
                    self._executor, self._run_batch, jobs[0].model, images, purify, classify
                )
            except Exception as exc:
                log.exception("inference failed on a batch of %d images", len(images))
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                return
            for stage, seconds in result.timings.items():
                self._metrics.stage[stage].observe(seconds)
            offset = 0
            for job in jobs:
                rows = slice(offset, offset + job.size)
                offset += job.size
                if not job.future.done():
                    job.future.set_result(
                        JobResult(_rows(result, rows), len(images), started - job.enqueued)
                    )
        finally:
            self._free.release()


def _expire(future: asyncio.Future) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


def _rows(result: StageResult, rows: slice) -> StageResult:
    def take(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else a[rows]

    return StageResult(
        purified=take(result.purified),
        noise_level=take(result.noise_level),
        noise_map=take(result.noise_map),
        purifier_spikes=take(result.purifier_spikes),
        logits=take(result.logits),
        classifier_spikes=take(result.classifier_spikes),
        timings=result.timings,
    )
