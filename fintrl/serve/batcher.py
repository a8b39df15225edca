"""Dynamic (micro-)batching for a server: texts from concurrent requests are scored together.

Every text a request brings is queued with a future. One consumer task takes texts off the queue: once the oldest
waiting text has waited `max_wait_ms`, or `max_batch_size` texts are waiting, it hands them to `score` (one call, one
batch) in a single worker thread, so the event loop keeps accepting requests while the model runs, and it answers
each text's future. Texts that arrive while a batch is being scored wait for the next one. A batch whose `score`
raises fails only the requests with a text in it: the consumer goes on with the next batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

logger = logging.getLogger(__name__)

R = TypeVar("R")


class BatcherClosed(RuntimeError):
    """The server is shutting down: the text was not scored."""


@dataclass
class _Pending:
    text: str
    future: asyncio.Future
    since: float  # loop time it was queued


@dataclass
class BatchStats:
    """What the batcher has done; read by /info and /metrics."""

    batches: int = 0  # batches scored
    texts: int = 0  # texts scored
    failed_batches: int = 0
    largest_batch: int = 0
    score_seconds: float = 0.0  # time spent in `score`
    sizes: dict[int, int] = field(default_factory=dict)  # batch size -> how many batches had it


class MicroBatcher(Generic[R]):
    """`await batcher.submit(texts)` -> one result per text, from `score(list_of_texts) -> list_of_results`."""

    def __init__(self, score: Callable[[list[str]], Sequence[R]], *, max_batch_size: int, max_wait_ms: float) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be 0 or more, got {max_wait_ms}")
        self.score = score
        self.max_batch_size, self.max_wait = max_batch_size, max_wait_ms / 1000
        self.stats = BatchStats()
        self._pending: deque[_Pending] = deque()
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    def start(self) -> None:
        """Start the consumer on the running event loop (a server's startup)."""
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fintrl-score")
        self._task = asyncio.get_running_loop().create_task(self._consume(), name="fintrl-batcher")

    async def stop(self) -> None:
        """Stop the consumer; texts still waiting fail with BatcherClosed (a batch being scored finishes alone)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        while self._pending:
            pending = self._pending.popleft()
            if not pending.future.done():
                pending.future.set_exception(BatcherClosed("the server is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def submit(self, texts: list[str]) -> list[R]:
        """Queue `texts`, wait for their batches; a batch failure raises its exception here."""
        if self._task is None or self._task.done():
            raise BatcherClosed("the batcher is not running")
        loop = asyncio.get_running_loop()
        now = loop.time()
        futures = [loop.create_future() for _ in texts]
        self._pending.extend(_Pending(text, fut, now) for text, fut in zip(texts, futures))
        self._arrived.set()
        results = await asyncio.gather(*futures, return_exceptions=True)  # every failure retrieved, none logged twice
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results

    async def _consume(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
            deadline = self._pending[0].since + self.max_wait  # the oldest text waits at most max_wait
            while len(self._pending) < self.max_batch_size and (remaining := deadline - loop.time()) > 0:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except asyncio.TimeoutError:  # noqa: UP041 - a distinct class on Python 3.10
                    break
            batch = [self._pending.popleft() for _ in range(min(self.max_batch_size, len(self._pending)))]
            batch = [p for p in batch if not p.future.done()]  # requests whose client went away
            if batch:
                await self._run(loop, batch)

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending]) -> None:
        start = time.perf_counter()
        try:
            results: Any = await loop.run_in_executor(self._executor, self.score, [p.text for p in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"the scorer returned {len(results)} results for {len(batch)} texts")
        except Exception as err:
            self.stats.failed_batches += 1
            if len(batch) > 1:  # one bad text must not fail the requests batched with it: each is scored alone
                logger.warning("scoring a batch of %d texts failed (%s); scoring them one at a time", len(batch), err)
                for pending in batch:
                    await self._run(loop, [pending])
                return
            logger.exception("scoring a text failed")
            if not batch[0].future.done():
                batch[0].future.set_exception(err)
            return
        stats = self.stats
        stats.batches += 1
        stats.texts += len(batch)
        stats.largest_batch = max(stats.largest_batch, len(batch))
        stats.score_seconds += time.perf_counter() - start
        stats.sizes[len(batch)] = stats.sizes.get(len(batch), 0) + 1
        for pending, result in zip(batch, results):
            if not pending.future.done():
                pending.future.set_result(result)
