"""Micro-batching: concurrent requests that arrive within a few milliseconds share one forward pass."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Pending(Generic[T, R]):
    items: Sequence[T]
    future: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class MicroBatcher(Generic[T, R]):
    """Collects items from concurrent callers and runs `fn(items) -> results` on `executor`.

    A batch closes when it holds `max_batch` items or `wait_s` after its first item. A request's
    items are never split across batches; a failing batch fails each of its requests.
    """

    def __init__(self, fn: Callable[[list[T]], list[R]], executor: Executor, max_batch: int, wait_s: float,
                 on_batch: Callable[[int, float], None] | None = None,
                 on_depth: Callable[[int], None] | None = None):
        self.fn = fn
        self.executor = executor
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.on_batch = on_batch or (lambda size, seconds: None)
        self.on_depth = on_depth or (lambda depth: None)
        self._queue: asyncio.Queue[_Pending[T, R]] = asyncio.Queue()
        self._waiting = 0
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def submit(self, items: Sequence[T]) -> list[R]:
        pending: _Pending[T, R] = _Pending(items)
        self._waiting += len(items)
        self.on_depth(self._waiting)
        await self._queue.put(pending)
        return await pending.future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        carry: _Pending | None = None
        while True:
            batch = [carry or await self._queue.get()]
            carry = None
            size = len(batch[0].items)
            deadline = loop.time() + self.wait_s
            while size < self.max_batch:
                try:
                    nxt = await asyncio.wait_for(self._queue.get(), max(0.0, deadline - loop.time()))
                except asyncio.TimeoutError:
                    break
                if size + len(nxt.items) > self.max_batch:
                    carry = nxt  # starts the next batch
                    break
                batch.append(nxt)
                size += len(nxt.items)
            self._waiting -= size
            self.on_depth(self._waiting)
            batch = [p for p in batch if not p.future.done()]  # a caller that gave up costs no forward pass
            if not batch:
                continue
            items = [item for p in batch for item in p.items]
            size = len(items)
            started = loop.time()
            try:
                results = await loop.run_in_executor(self.executor, self.fn, items)
            except Exception as exc:  # every caller of this batch gets the error
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            self.on_batch(size, loop.time() - started)
            offset = 0
            for p in batch:
                if not p.future.done():  # a caller may give up while its batch runs
                    p.future.set_result(results[offset : offset + len(p.items)])
                offset += len(p.items)
