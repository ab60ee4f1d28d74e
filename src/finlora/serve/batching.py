"""Inference off the event loop: one worker thread, with requests that arrive while it is busy
run together as one batch.

There is no batching window: a lone request starts at once (no added latency), and under load
the queue that builds up during one forward pass becomes the next batch. One worker thread
means ONNX Runtime's intra-op threads are never oversubscribed by parallel sessions.

Backpressure: the queue holds at most `max_queue_texts` texts (a request that would overflow
it is refused at once), and a request that waited `timeout_s` without its batch starting is
dropped before inference. Both raise `Rejected`, which the service answers with 503 and
`Retry-After`. A request whose batch has started always gets its result.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from finlora.predictor import Predictor

log = logging.getLogger(__name__)


class Rejected(Exception):
    """Refused without inference: `reason` is queue_full, deadline or shutting_down."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass
class _Job:
    texts: list[str]
    future: asyncio.Future = field(repr=False)
    enqueued: float = 0.0
    deadline: float = float("inf")
    started: bool = False
    released: bool = False


class MicroBatcher:
    def __init__(
        self,
        predictor: Predictor,
        max_texts: int,
        on_batch=None,
        *,
        max_queue_texts: int | None = None,
        timeout_s: float | None = None,
        on_reject=None,
        on_start=None,
    ) -> None:
        self.predictor = predictor
        self.max_texts = max_texts
        self.max_queue_texts = max_queue_texts
        self.timeout_s = timeout_s
        self.on_batch = on_batch  # called with the size of every batch run
        self.on_reject = on_reject  # called with the reason of every refusal
        self.on_start = on_start  # called with the seconds a job waited before its batch
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()
        self.queued_texts = 0  # accepted, not started, not given up
        self.closing = False
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="finlora-inference")
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name="finlora-batcher")

    async def close(self) -> None:
        self.closing = True
        if self.task:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        while not self.queue.empty():  # nobody will run these any more
            job = self.queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(self._reject("shutting_down"))
        self.executor.shutdown(wait=True, cancel_futures=True)  # queued work will not run

    def _reject(self, reason: str) -> Rejected:
        if self.on_reject:
            self.on_reject(reason)
        detail = {
            "queue_full": f"server busy: more than {self.max_queue_texts} texts queued "
            "(max_queue_texts); retry later",
            "deadline": f"server busy: the request waited {self.timeout_s:g} s in the queue "
            "(request_timeout_s); retry later",
            "shutting_down": "server shutting down; retry on another instance",
        }[reason]
        return Rejected(reason, detail)

    def _release(self, job: _Job) -> None:
        if not job.released:
            job.released = True
            self.queued_texts -= len(job.texts)

    async def predict(self, texts: list[str]) -> list[dict]:
        if self.closing:
            raise self._reject("shutting_down")
        limit = self.max_queue_texts
        # An empty queue takes any request (it is at most max_batch texts).
        if limit is not None and self.queued_texts and self.queued_texts + len(texts) > limit:
            raise self._reject("queue_full")
        loop = asyncio.get_running_loop()
        now = loop.time()
        job = _Job(texts, loop.create_future(), enqueued=now)
        if self.timeout_s is not None:
            job.deadline = now + self.timeout_s
        self.queued_texts += len(texts)
        self.queue.put_nowait(job)
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), self.timeout_s)
        except asyncio.TimeoutError:  # not yet the builtin on Python 3.10
            if job.started:  # running already: it finishes
                return await job.future
            self._release(job)
            job.future.cancel()  # the worker skips it
            raise self._reject("deadline") from None
        except asyncio.CancelledError:  # the client went away
            if not job.started:
                self._release(job)
                job.future.cancel()
            raise

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        carried: _Job | None = None
        while True:
            jobs = [carried or await self.queue.get()]
            carried = None
            size = len(jobs[0].texts)
            while not self.queue.empty():
                job = self.queue.get_nowait()
                if size + len(job.texts) > self.max_texts:
                    carried = job
                    break
                jobs.append(job)
                size += len(job.texts)
            now = loop.time()
            runnable = []
            for job in jobs:
                if job.future.done():  # gave up (deadline) or client gone
                    continue
                self._release(job)
                if now > job.deadline:
                    job.future.set_exception(self._reject("deadline"))
                    continue
                job.started = True
                if self.on_start:
                    self.on_start(now - job.enqueued)
                runnable.append(job)
            jobs = runnable
            if not jobs:
                continue
            texts = [t for j in jobs for t in j.texts]
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(self.executor, self.predictor.predict, texts)
            except Exception as exc:  # a bug or a broken model: fail these requests, keep serving
                log.exception("inference failed for a batch of %d texts", len(texts))
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            log.debug(
                "batch of %d texts in %.1f ms", len(texts), 1e3 * (time.perf_counter() - started)
            )
            if self.on_batch:
                self.on_batch(len(texts))
            start = 0
            for job in jobs:
                if not job.future.done():
                    job.future.set_result(results[start : start + len(job.texts)])
                start += len(job.texts)
