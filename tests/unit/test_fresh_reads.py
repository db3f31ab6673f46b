"""FreshReads: many waiters of one hold share one read, and none gets a stale one."""

from __future__ import annotations

import asyncio

import pytest

from gateway.services.approvals import FreshReads


class Store:
    """A value per key, and a read that takes until the test releases it."""

    def __init__(self) -> None:
        self.value = 0
        self.reads = 0
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.fail: Exception | None = None

    async def read(self, key: str) -> int:
        self.reads += 1
        seen = self.value  # what the read sees is fixed when it starts
        self.started.set()
        await self.release.wait()
        if self.fail is not None:
            raise self.fail
        return seen


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, 10))


def test_callers_waiting_together_share_one_read() -> None:
    async def scenario() -> None:
        store = Store()
        reads = FreshReads(store.read)
        callers = [asyncio.create_task(reads.get("h")) for _ in range(2000)]
        await store.started.wait()
        store.release.set()
        assert await asyncio.gather(*callers) == [0] * 2000
        assert store.reads == 1

    run(scenario())


def test_a_caller_arriving_during_a_read_gets_the_next_one() -> None:
    async def scenario() -> None:
        store = Store()
        reads = FreshReads(store.read)
        early = asyncio.create_task(reads.get("h"))
        await store.started.wait()
        store.value = 1  # changed after the running read looked
        # Scheduled before the release: they ask while the first read is running.
        late = [asyncio.create_task(reads.get("h")) for _ in range(100)]
        store.release.set()
        assert await early == 0
        assert await asyncio.gather(*late) == [1] * 100
        assert store.reads == 2

    run(scenario())


def test_keys_are_read_separately() -> None:
    async def scenario() -> None:
        store = Store()
        store.release.set()
        reads = FreshReads(store.read)
        await asyncio.gather(reads.get("a"), reads.get("b"), reads.get("a"))
        assert store.reads == 2

    run(scenario())


def test_a_cancelled_caller_does_not_cancel_the_shared_read() -> None:
    async def scenario() -> None:
        store = Store()
        reads = FreshReads(store.read)
        leaving = asyncio.create_task(reads.get("h"))
        staying = asyncio.create_task(reads.get("h"))
        await store.started.wait()
        leaving.cancel()
        store.release.set()
        assert await staying == 0
        with pytest.raises(asyncio.CancelledError):
            await leaving

    run(scenario())


def test_a_failed_read_fails_every_caller_and_the_next_read_is_new() -> None:
    async def scenario() -> None:
        store = Store()
        store.fail = ConnectionError("down")
        reads = FreshReads(store.read)
        callers = [asyncio.create_task(reads.get("h")) for _ in range(3)]
        await store.started.wait()
        store.release.set()
        results = await asyncio.gather(*callers, return_exceptions=True)
        assert all(isinstance(r, ConnectionError) for r in results)
        store.fail = None
        assert await reads.get("h") == 0
        assert store.reads == 2

    run(scenario())


def test_a_failed_read_nobody_waits_for_is_not_reported_as_unretrieved() -> None:
    async def scenario() -> None:
        store = Store()
        store.fail = ConnectionError("down")
        reads = FreshReads(store.read)
        caller = asyncio.create_task(reads.get("h"))
        await store.started.wait()
        caller.cancel()
        store.release.set()
        await reads.drain()

    run(scenario())
