"""Dynamic batching and admission for the API: many clients, one model.

:class:`Scheduler` owns the count of work in the server (queued + generating, streams included),
refuses beyond its capacity with a ``Retry-After`` estimated from the queue, and runs one worker
thread that turns queued non-streamed requests into batched ``Answerer.answer_plans`` calls (each
request's plan was made once, when it was admitted):

- the oldest queued request starts a batch; the worker waits up to ``max_wait`` seconds for more,
  then takes up to ``max_batch`` requests that can share one generation (same sampling parameters),
  oldest first, so every admitted request is served in arrival order (FIFO);
- a cancelled request (its client went away) leaves the queue at once and frees its slot; one
  already generating stops at the next decoding step (the engine checks its cancel event);
- streamed requests are generated one at a time in their own thread (the engine streams one
  sequence), but they hold a slot like any other request.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any


class Busy(Exception):
    """The server is full: retry after ``retry_after`` seconds."""

    def __init__(self, load: int, retry_after: int):
        super().__init__(f"server busy: {load} requests in progress or queued; retry after {retry_after} s")
        self.load, self.retry_after = load, retry_after


@dataclass(eq=False)  # a job is itself: queue membership is by identity
class Job:
    """One admitted request: its answer plan (made once, at admission) and sampling parameters; its
    future resolves to an Answer (or an exception)."""

    plan: Any  # AnswerPlan
    params: Any  # GenerationParams
    stream: bool = False
    cancel: threading.Event = field(default_factory=threading.Event)
    enqueued: float = field(default_factory=time.monotonic)
    future: asyncio.Future | None = None
    loop: asyncio.AbstractEventLoop | None = None
    released: bool = False

    def key(self) -> tuple:
        """Jobs with equal keys share one batched generation (their plans are already made)."""
        return self.params.key()

    def resolve(self, value: Any) -> None:
        """Hand ``value`` (an Answer or an exception) to the waiting request, from any thread."""
        if self.loop is None or self.future is None:
            return

        def _set() -> None:
            if not self.future.done():
                (self.future.set_exception if isinstance(value, BaseException) else self.future.set_result)(value)

        self.loop.call_soon_threadsafe(_set)


class Scheduler:
    """Admission (capacity = ``max_batch + max_queue``) plus the batching worker (see module doc)."""

    def __init__(self, answerer, max_batch: int = 8, max_queue: int = 32, max_wait: float = 0.01):
        self.answerer = answerer
        self.max_batch, self.max_wait = max(1, max_batch), max(0.0, max_wait)
        self.capacity = self.max_batch + max(0, max_queue)
        self._cv = threading.Condition()
        self._queue: deque[Job] = deque()
        self.load = 0  # admitted and not yet released: queued + generating + streaming
        self.running = 0  # jobs in the batch being generated now
        self.streaming = 0
        self.batch_seconds = 1.0  # moving average of one batch (or stream), for Retry-After
        self.batches = 0
        self._worker = threading.Thread(target=self._loop, name="qihuang-batcher", daemon=True)
        self._stopped = False
        self._worker.start()

    # ---- admission ----------------------------------------------------------------------
    def retry_after(self) -> int:
        """Seconds until what is admitted now has drained: the batches ahead times a batch's time."""
        ahead = math.ceil(max(1, self.load) / self.max_batch)  # batches to drain what is admitted now
        return max(1, math.ceil(ahead * self.batch_seconds))

    def admit(self, job: Job) -> Job:
        """Count ``job`` in, or raise :class:`Busy`."""
        with self._cv:
            if self.load >= self.capacity:
                raise Busy(self.load, self.retry_after())
            self.load += 1
            if job.stream:
                self.streaming += 1
        return job

    def release(self, job: Job) -> None:
        """Free ``job``'s slot (once, however often called)."""
        with self._cv:
            if not job.released:
                job.released = True
                self.load -= 1
                if job.stream:
                    self.streaming -= 1

    def stats(self) -> dict:
        with self._cv:
            return {"running": self.running + self.streaming, "queued": len(self._queue), "load": self.load,
                    "capacity": self.capacity, "max_batch": self.max_batch,
                    "batches": self.batches, "batch_seconds": round(self.batch_seconds, 3)}

    def observe(self, seconds: float) -> None:
        """Fold one generation's duration into the Retry-After estimate."""
        with self._cv:
            self.batch_seconds = 0.7 * self.batch_seconds + 0.3 * seconds if self.batches else seconds
            self.batches += 1

    # ---- batching -----------------------------------------------------------------------
    def submit(self, job: Job) -> asyncio.Future:
        """Queue an admitted non-streamed job; the future resolves to its Answer."""
        job.loop = asyncio.get_running_loop()
        job.future = job.loop.create_future()
        with self._cv:
            self._queue.append(job)
            self._cv.notify_all()
        return job.future

    def cancel(self, job: Job) -> None:
        """The client went away: drop ``job`` from the queue or stop its generation; free its slot."""
        job.cancel.set()
        with self._cv:
            if job in self._queue:
                self._queue.remove(job)
        self.release(job)

    def close(self) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify_all()

    def _take(self) -> list[Job] | None:
        """The next batch: wait for a first job, then up to ``max_wait`` for companions."""
        with self._cv:
            while True:
                while not self._queue and not self._stopped:
                    self._cv.wait()
                if self._stopped:
                    return None
                first = self._queue[0]
                deadline = first.enqueued + self.max_wait
                while (len(self._queue) < self.max_batch and (left := deadline - time.monotonic()) > 0
                       and not self._stopped):
                    self._cv.wait(timeout=left)
                if first not in self._queue:  # cancelled while waiting for companions
                    continue
                key = first.key()
                batch = [j for j in self._queue if j.key() == key][: self.max_batch]
                for job in batch:
                    self._queue.remove(job)
                self.running = len(batch)
                return batch

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            start = time.monotonic()
            try:
                self._run(batch)
            finally:
                self.observe(time.monotonic() - start)
                with self._cv:
                    self.running = 0
                for job in batch:
                    self.release(job)

    def _run(self, batch: list[Job]) -> None:
        try:
            answers = self._answer(batch)
        except Exception as exc:  # noqa: BLE001 - isolate the request that fails
            if len(batch) == 1:
                batch[0].resolve(exc)
                return
            for job in batch:
                raise_into(job, self._answer)
            return
        for job, answer in zip(batch, answers):
            job.resolve(answer)

    def _answer(self, batch: list[Job]) -> list:
        return self.answerer.answer_plans([j.plan for j in batch], batch[0].params, [j.cancel for j in batch])


def raise_into(job: Job, answer) -> None:
    """Answer ``job`` alone, handing it its answer or its exception."""
    try:
        job.resolve(answer([job])[0])
    except Exception as exc:  # noqa: BLE001 - surfaced to the request
        job.resolve(exc)
