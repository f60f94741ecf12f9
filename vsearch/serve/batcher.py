"""Micro-batching: concurrent requests' photos answered by one model call.

A request hands its photos to :meth:`Batcher.submit` and awaits its own answer. One worker task
takes what is queued, waits at most ``window_s`` after the first photo for more (or until
``max_photos`` are queued), and runs the whole batch in a thread with the ``run`` function it
was given (answers.py: one ``embed_each`` over every photo, one index search per (k, filter),
all on one served index). Under load the next batch fills while the current one runs, so the
window only matters when requests trickle in.

* Bounded: at most ``queue_photos`` photos wait; a request that would pass that gets 503
  ``busy`` at once (``Retry-After``), as a decoding slot that stays busy does (uploads.py).
* Errors kept apart: ``run`` returns one outcome per job, an answer or the exception for that
  job alone; an exception of ``run`` itself fails only the batch it was running.
* Cancellation: a request cancelled while queued (client gone, timeout) leaves the queue and
  frees its photos' room at once; one cancelled while its batch runs is simply not answered.

Used from the event loop only (the counters need no lock); ``run`` runs in a worker thread, one
batch at a time, so a batch's photos are decoded one after another (one large decode in flight).
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.concurrency import run_in_threadpool

from vsearch.serve.uploads import ApiError


@dataclass(frozen=True)
class BatchSettings:
    # The wait for company after the first photo reaches an idle batcher. Under load batches
    # fill while the previous one runs, so this only helps when requests arrive a moment apart;
    # it is added to every lone request's latency (issue 33 allows a single client 2 ms).
    window_s: float = 0.001
    # Photos per model call: one /search/batch request's worth; larger batches add latency to
    # every request in them for little more throughput on a CPU.
    max_photos: int = 32
    # Photos waiting for a batch (undecoded uploads, <= 10 MB each): 8 full batches, a fraction
    # of a second of work; beyond it a client is told to come back rather than left queuing.
    queue_photos: int = 256

    def __post_init__(self) -> None:
        if self.window_s < 0 or self.max_photos < 1 or self.queue_photos < 1:
            raise ValueError(f"need window >= 0, max photos and queue >= 1: {self}")


@dataclass(eq=False)  # a job is itself: found in the queue by identity
class Job:
    photos: Sequence[bytes]
    params: Any  # what ``run`` needs beside the photos (k, filter)
    future: asyncio.Future[Any] = field(repr=False)
    arrived: float = field(default_factory=time.perf_counter)


Run = Callable[[list[Job]], list[Any]]  # jobs -> one outcome each (an answer or an exception)


class Batcher:
    def __init__(
        self,
        run: Run,
        settings: BatchSettings,
        on_batch: Callable[[int, int], None] = lambda photos, jobs: None,
    ) -> None:
        self._run = run
        self.settings = settings
        self._on_batch = on_batch  # (photos, requests) per model call: metrics
        self._queue: collections.deque[Job] = collections.deque()
        self.queued_photos = 0
        self.batches = 0
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._running: list[Job] = []  # the batch in the model now

    async def submit(self, photos: Sequence[bytes], params: Any) -> Any:
        """The outcome of ``run`` for these photos; raises the job's own exception."""
        s = self.settings
        if self.queued_photos + len(photos) > s.queue_photos:
            raise ApiError(
                503,
                "busy",
                f"the search queue is full ({self.queued_photos} of {s.queue_photos} photos "
                "waiting for the model): retry shortly",
            )
        self._start()
        assert self._wake is not None
        job = Job(photos, params, asyncio.get_running_loop().create_future())
        self._queue.append(job)
        self.queued_photos += len(photos)
        self._wake.set()
        try:
            outcome = await job.future
        except asyncio.CancelledError:
            if job in self._queue:  # not taken yet: its room is free again
                self._queue.remove(job)
                self.queued_photos -= len(photos)
            job.future.cancel()  # a running batch then skips it
            raise
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def _start(self) -> None:
        if self._worker is None or self._worker.done():
            self._wake = asyncio.Event()
            self._worker = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        for job in [*self._running, *self._queue]:
            job.future.cancel()
        self._queue.clear()
        self.queued_photos = 0

    async def _loop(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._queue:
                continue
            await self._fill()
            batch = self._take()
            if not batch:
                continue
            self.batches += 1
            self._running = batch
            try:
                self._on_batch(sum(len(j.photos) for j in batch), len(batch))
                outcomes = await run_in_threadpool(self._run, batch)
            except Exception as e:  # run's own failure: this batch's requests only
                outcomes = [e] * len(batch)
            finally:
                self._running = []
            for job, outcome in zip(batch, outcomes, strict=True):
                if not job.future.done():  # cancelled meanwhile: nobody waits for it
                    job.future.set_result(outcome)
            if self._queue:
                self._wake.set()

    async def _fill(self) -> None:
        """Wait until the window after the oldest queued photo closes or a batch is full."""
        assert self._wake is not None
        s = self.settings
        while self._queue and self.queued_photos < s.max_photos:
            left = self._queue[0].arrived + s.window_s - time.perf_counter()
            if left <= 0:
                return
            try:
                await asyncio.wait_for(self._wake.wait(), left)
            except TimeoutError:
                return
            self._wake.clear()

    def _take(self) -> list[Job]:
        """Jobs in arrival order up to ``max_photos`` photos (always at least one job)."""
        batch: list[Job] = []
        photos = 0
        while self._queue:
            n = len(self._queue[0].photos)
            if batch and photos + n > self.settings.max_photos:
                break
            job = self._queue.popleft()
            self.queued_photos -= n
            if job.future.done():
                continue
            batch.append(job)
            photos += n
        return batch
