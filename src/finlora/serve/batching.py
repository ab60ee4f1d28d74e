"""Inference off the event loop: one worker thread, with requests that arrive while it is busy
run together as one batch.

There is no batching window: a lone request starts at once (no added latency), and under load
the queue that builds up during one forward pass becomes the next batch. One worker thread
means ONNX Runtime's intra-op threads are never oversubscribed by parallel sessions.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from finlora.predictor import Predictor

log = logging.getLogger(__name__)


@dataclass
class _Job:
    texts: list[str]
    future: asyncio.Future = field(repr=False)


class MicroBatcher:
    def __init__(self, predictor: Predictor, max_texts: int, on_batch=None) -> None:
        self.predictor = predictor
        self.max_texts = max_texts
        self.on_batch = on_batch  # called with the size of every batch run
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="finlora-inference")
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name="finlora-batcher")

    async def close(self) -> None:
        if self.task:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        self.executor.shutdown(wait=True)

    async def predict(self, texts: list[str]) -> list[dict]:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put(_Job(texts, future))
        return await future

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
            jobs = [j for j in jobs if not j.future.done()]  # client gone
            if not jobs:
                continue
            texts = [t for j in jobs for t in j.texts]
            try:
                results = await loop.run_in_executor(self.executor, self.predictor.predict, texts)
            except Exception as exc:  # a bug or a broken model: fail these requests, keep serving
                log.exception("inference failed for a batch of %d texts", len(texts))
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            if self.on_batch:
                self.on_batch(len(texts))
            start = 0
            for job in jobs:
                if not job.future.done():
                    job.future.set_result(results[start : start + len(job.texts)])
                start += len(job.texts)
