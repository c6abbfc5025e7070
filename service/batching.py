"""Dynamic micro-batching.

Requests put a ``Job`` (one or more images and what to do with them) on a bounded queue
and await its future. ``streams`` inference threads take batches from that queue
themselves: a free stream takes the first waiting job, gathers more until the batch holds
``max_batch_size`` images or ``batch_wait_ms`` has passed since the first was taken, runs
the batch and hands the results back to the event loop in one callback, then takes the
next batch at once. One free stream gathers at a time; the others run their batches
meanwhile (the sessions are shared: ONNX Runtime runs one session from several threads).
On CPU the bare pipeline runs faster as one batch per thread, one ORT thread each, than as
one batch split over all threads (``docs/benchmarks.md``).

The streams pull rather than being handed batches by the event loop: a stream that comes
free never waits for the loop to get round to it (the loop may be busy answering the batch
that just finished and reading the next requests: ~5 ms on 2 cores at concurrency 32, when
a batch runs ~25 ms), and the loop does nothing per batch but resolve its futures.

A full queue refuses new jobs at once (``Overloaded``) instead of letting latency grow
without bound.

A job names the model it runs on (the ``Runtime`` its request started with): a batch holds
jobs of one model only, so a reload that swaps the model never runs a request's images
through another model than the one whose class names and version answer it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .metrics import Metrics
from .runtime import StageResult

log = logging.getLogger("spikeguard.batching")

STOP_WAIT_S = 30.0  # how long stop() waits for the running batches to end


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
        self._queue_size = queue_size
        self.streams = streams
        # the queue and everything below it are guarded by the condition's lock; the
        # gathering stream waits on it for jobs
        self._ready = threading.Condition()
        self._jobs: deque[Job] = deque()
        self._queued_images = 0  # in the queued jobs
        self._held: dict[int, list[Job]] = {}  # each stream's batch, forming or running
        self._stopping = False
        self._gathering = threading.Lock()  # held by the one free stream that gathers
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._threads = [
            threading.Thread(
                target=self._stream, args=(index,), name=f"inference-{index}", daemon=True
            )
            for index in range(self.streams)
        ]
        for thread in self._threads:
            thread.start()

    async def stop(self) -> None:
        """Refuses the queued jobs and those of the batches being gathered or run with
        ``Overloaded``, and returns once every stream thread has ended (a running batch
        first finishes; its results are dropped), or after ``STOP_WAIT_S`` (the threads are
        daemons: a batch stuck in the model does not keep the process alive)."""
        with self._ready:
            self._stopping = True
            jobs = [job for batch in self._held.values() for job in batch] + list(self._jobs)
            self._jobs.clear()
            self._queued_images = 0
            self._ready.notify_all()
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(Overloaded("the service is shutting down"))
        deadline = time.perf_counter() + STOP_WAIT_S
        while any(thread.is_alive() for thread in self._threads):
            if time.perf_counter() > deadline:  # a batch stuck in the model: let it be
                log.warning("an inference stream did not end within %.0f s", STOP_WAIT_S)
                return
            await asyncio.sleep(0.005)

    @property
    def depth(self) -> int:
        return len(self._jobs)

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
        with self._ready:
            if self._stopping:
                raise Overloaded("the service is shutting down")
            if len(self._jobs) >= self._queue_size:
                raise Overloaded(f"the inference queue is full ({self._queue_size} waiting)")
            self._jobs.append(job)
            self._queued_images += job.size
            depth = len(self._jobs)
            self._ready.notify()
        self._metrics.queue_depth.set(depth)
        # on timeout the job's future fails, and the stream skips it (a bare timer: about
        # a third of what ``asyncio.timeout``'s context costs per request)
        timer = loop.call_later(timeout, _expire, future)
        try:
            return await future
        finally:
            timer.cancel()

    # ----------------------------------------------------------------- stream threads

    def _stream(self, index: int) -> None:
        while True:
            with self._gathering:
                jobs = self._gather(index)
            if jobs is None:
                return
            # a job that timed out while it waited is not run (``done`` read from this
            # thread is a hint: a job that times out later is run and its result dropped)
            jobs = [job for job in jobs if not job.future.done()]
            if jobs:
                self._answer_from_thread(jobs, self._run(jobs))
            with self._ready:
                self._held.pop(index, None)

    def _share(self, first: Job) -> int:
        """The images this batch may take: ``max_batch_size``, and with several streams and
        no batch wait no more than an even share of the queued images (its first job's
        included), so that the next stream to come free finds the rest instead of one batch
        taking everything while the other streams idle; on CPU one thread runs a batch of one
        at 0.76-0.98 of its per-image rate at batch 32 (docs/benchmarks.md), less than an
        idle core loses."""
        if self.streams == 1 or self._wait > 0:  # a wait asks for company: up to the cap
            return self.max_batch_size
        queued = first.size + self._queued_images
        share = -(-queued // self.streams)  # ceil
        return max(1, min(self.max_batch_size, share))

    def _gather(self, index: int) -> list[Job] | None:
        """The next batch (its jobs); None once the batcher stops."""
        with self._ready:
            while not self._jobs and not self._stopping:
                self._ready.wait()
            if self._stopping:
                return None
            first = self._jobs.popleft()
            self._queued_images -= first.size
            jobs, images = [first], first.size
            self._held[index] = jobs
            limit = self._share(first)
            deadline = time.perf_counter() + self._wait
            while images < limit and not self._stopping:
                if not self._jobs:
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        break
                    self._ready.wait(remaining)
                    continue
                job = self._jobs[0]
                if images + job.size > limit or job.model is not first.model:
                    break  # it starts the next batch
                self._jobs.popleft()
                self._queued_images -= job.size
                jobs.append(job)
                images += job.size
            if self._stopping:
                return None  # stop() answers the held jobs
            depth = len(self._jobs)
        self._metrics.queue_depth.set(depth)
        return jobs

    def _run(self, jobs: list[Job]) -> list[JobResult] | BaseException:
        """Runs one batch; each job's results, or what the batch raised (answered to its
        jobs; the stream goes on with the next batch)."""
        started = time.perf_counter()
        try:
            images = (
                np.concatenate([job.images for job in jobs]) if len(jobs) > 1 else jobs[0].images
            )
            sizes = [job.size for job in jobs]
            purify = np.repeat([job.purify for job in jobs], sizes)
            classify = np.repeat([job.classify for job in jobs], sizes)
            self._metrics.batch_size.observe(len(images))
            result = self._run_batch(jobs[0].model, images, purify, classify)
        except BaseException as exc:
            log.exception("inference failed on a batch of %d jobs", len(jobs))
            return exc
        for stage, seconds in result.timings.items():
            self._metrics.stage[stage].observe(seconds)
        answers, offset = [], 0
        for job in jobs:
            rows = slice(offset, offset + job.size)
            offset += job.size
            answers.append(JobResult(_rows(result, rows), len(images), started - job.enqueued))
        return answers

    def _answer_from_thread(
        self, jobs: list[Job], outcome: list[JobResult] | BaseException
    ) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting
            self._loop.call_soon_threadsafe(_answer, jobs, outcome)


def _answer(jobs: list[Job], outcome: list[JobResult] | BaseException) -> None:
    """On the event loop: resolves the futures of a batch's jobs (those not yet answered by
    a timeout or stop())."""
    for i, job in enumerate(jobs):
        if job.future.done():
            continue
        if isinstance(outcome, BaseException):
            job.future.set_exception(outcome)
        else:
            job.future.set_result(outcome[i])


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
