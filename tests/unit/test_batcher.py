"""Micro-batching: requests share a batch in order, and a caller that gave up costs no forward pass."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

from headguard.api.batcher import MicroBatcher


def test_an_abandoned_request_is_not_run():
    calls: list[list[str]] = []
    release = threading.Event()

    def fn(items: list[str]) -> list[str]:
        calls.append(list(items))
        release.wait(5)  # the first batch holds the model thread while the second caller gives up
        return [item.upper() for item in items]

    async def main() -> tuple[list[str], list[str]]:
        batcher = MicroBatcher(fn, ThreadPoolExecutor(1), max_batch=4, wait_s=0.01)
        batcher.start()
        first = asyncio.create_task(batcher.submit(["a"]))
        await asyncio.sleep(0.1)
        try:
            await asyncio.wait_for(batcher.submit(["late"]), 0.05)
        except TimeoutError:
            pass
        release.set()
        second = await batcher.submit(["c", "d"])
        result = await first
        await batcher.stop()
        return result, second

    first, second = asyncio.run(main())
    assert first == ["A"] and second == ["C", "D"]
    assert calls == [["a"], ["c", "d"]]
