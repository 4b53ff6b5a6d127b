"""Micro-batching of concurrent searches: queries that share a key go to Milvus as one multi-vector call.

A key is everything a search call has in common besides its query vectors and its limit (the collection,
the filter expression, a bound on the limit): only searches with equal keys are merged, so a search never
sees hits filtered for another caller. A merged call asks for the largest limit of its searches; each
caller gets back the hits of its own query rows (possibly more than it asked for: it cuts them itself).

When a call may go out (fewer than ``max_in_flight`` calls of that key are running), the queued queries
leave at once, or after ``max_wait_s`` when that is positive; while the calls are busy, new queries queue
and leave together as soon as one returns (like Triton's dynamic batcher). A lone search therefore waits
for nothing with ``max_wait_s=0``, and concurrent ones are merged up to ``max_queries`` rows per call.
Measured figures: docs/vector-store.md.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np

from couturier.services.common.vectors.spaces import Hit

K = TypeVar("K", bound=Hashable)

#: Runs one search call: the key, the stacked query rows and the limit -> one list of hits per row.
SearchCall = Callable[[K, np.ndarray, int], Awaitable[list[list[Hit]]]]


@dataclass
class _Item:
    """One caller's search waiting in a queue."""

    matrix: np.ndarray
    limit: int
    future: asyncio.Future[list[list[Hit]]]

    @property
    def rows(self) -> int:
        return int(self.matrix.shape[0])


@dataclass
class _Queue:
    """The queued queries of one key and the calls of that key now running."""

    items: list[_Item] = field(default_factory=list)
    rows: int = 0
    in_flight: int = 0
    timer: asyncio.Handle | None = None


@dataclass
class BatchStats:
    """What the batcher did: searches asked for, calls made, query rows sent."""

    searches: int = 0
    calls: int = 0
    rows: int = 0
    largest_call: int = 0


class SearchBatcher(Generic[K]):
    """Merges concurrent searches with the same key into calls of at most ``max_queries`` rows.

    ``max_queries <= 1`` turns merging off (every search is its own call). A search of more rows than
    ``max_queries`` is sent on its own. Not thread-safe: use it from one event loop.
    """

    def __init__(self, call: SearchCall[K], *, max_queries: int, max_wait_s: float, max_in_flight: int) -> None:
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        self._call = call
        self.max_queries = max(1, int(max_queries))
        self.max_wait_s = float(max_wait_s)
        self.max_in_flight = int(max_in_flight)
        self.stats = BatchStats()
        self._queues: dict[K, _Queue] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def enabled(self) -> bool:
        return self.max_queries > 1

    async def search(self, key: K, matrix: np.ndarray, limit: int) -> list[list[Hit]]:
        """The hits of each row of ``matrix`` (a 2-d float32 array), at least ``limit`` per row where that
        many match, possibly found in a merged call."""
        rows = int(matrix.shape[0])
        self.stats.searches += 1
        if not self.enabled or rows >= self.max_queries:
            self._count(rows)
            return await self._call(key, matrix, limit)
        loop = asyncio.get_running_loop()
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _Queue()
        future: asyncio.Future[list[list[Hit]]] = loop.create_future()
        queue.items.append(_Item(matrix, int(limit), future))
        queue.rows += rows
        self._pump(key, queue, now=False)
        return await future

    def _count(self, rows: int) -> None:
        self.stats.calls += 1
        self.stats.rows += rows
        self.stats.largest_call = max(self.stats.largest_call, rows)

    def _pump(self, key: K, queue: _Queue, *, now: bool) -> None:
        """Send what may go while calls are free: full batches at once, the rest at once when ``now``,
        else when the wait (or, with no wait, this loop iteration) is over."""
        while queue.items and queue.in_flight < self.max_in_flight:
            if now or queue.rows >= self.max_queries:
                self._dispatch(key, queue)
            else:
                if queue.timer is None:
                    loop = asyncio.get_running_loop()
                    queue.timer = (
                        loop.call_later(self.max_wait_s, self._on_timer, key, queue)
                        if self.max_wait_s > 0
                        else loop.call_soon(self._on_timer, key, queue)  # same-tick arrivals still merge
                    )
                return
        self._forget_if_idle(key, queue)

    def _on_timer(self, key: K, queue: _Queue) -> None:
        queue.timer = None
        self._pump(key, queue, now=True)

    def _dispatch(self, key: K, queue: _Queue) -> None:
        """Send the queued queries of ``key`` (up to max_queries rows) as one call."""
        batch: list[_Item] = []
        taken = 0
        while queue.items:
            item = queue.items[0]
            if item.future.done():  # its caller was cancelled while queued
                queue.items.pop(0)
                queue.rows -= item.rows
                continue
            if batch and taken + item.rows > self.max_queries:
                break
            queue.items.pop(0)
            queue.rows -= item.rows
            batch.append(item)
            taken += item.rows
        if not batch:
            return
        queue.in_flight += 1
        self._count(taken)
        task = asyncio.get_running_loop().create_task(self._send(key, queue, batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, key: K, queue: _Queue, batch: list[_Item]) -> None:
        try:
            matrix = batch[0].matrix if len(batch) == 1 else np.concatenate([i.matrix for i in batch], axis=0)
            hits = await self._call(key, matrix, max(i.limit for i in batch))
            if len(hits) != matrix.shape[0]:
                raise RuntimeError(f"a search of {matrix.shape[0]} query vectors returned {len(hits)} hit lists")
        except BaseException as exc:  # every caller of the call gets its failure
            for item in batch:
                if item.future.done():
                    continue
                if isinstance(exc, asyncio.CancelledError):
                    item.future.cancel()
                else:
                    item.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            start = 0
            for item in batch:
                if not item.future.done():
                    item.future.set_result(hits[start : start + item.rows])
                start += item.rows
        finally:
            queue.in_flight -= 1
            self._pump(key, queue, now=True)  # those who queued meanwhile have waited long enough

    def _forget_if_idle(self, key: K, queue: _Queue) -> None:
        if not queue.items and queue.in_flight == 0 and queue.timer is None and self._queues.get(key) is queue:
            del self._queues[key]
