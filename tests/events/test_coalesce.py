"""Appends made at one moment go to the store together, each caller with its own answer."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from test_store_contract import ev

from stageline.errors import ConcurrencyError
from stageline.events import NO_STREAM, NewEvent
from stageline.events.coalesce import AppendCoalescer
from stageline.events.redis_store import RedisEventStore
from stageline.events.store import AppendRequest, AppendResult


class Counted(RedisEventStore):
    """The real store, noting the size of each ``append_batch`` it is asked for."""

    batches: list[int]

    async def append_batch(
        self, requests: Sequence[AppendRequest]
    ) -> list[AppendResult | Exception]:
        self.batches.append(len(requests))
        return await super().append_batch(requests)


@pytest.fixture
async def store(redis_store: RedisEventStore) -> Counted:
    counted = Counted(redis_store.client)
    counted.batches = []
    return counted


async def test_appends_made_together_go_in_one_batch_each_with_its_own_answer(
    store: Counted, workspace: str
) -> None:
    await store.append(workspace, "taken", [ev()])
    store.batches.clear()
    coalescer = AppendCoalescer(store.append_batch)
    streams = [f"s{i}" for i in range(20)] + ["taken"]

    results = await asyncio.gather(
        *(coalescer.call(AppendRequest(workspace, s, [ev(1), ev(2)], NO_STREAM)) for s in streams)
    )

    assert store.batches == [21]
    for stream, result in zip(streams[:-1], results, strict=False):
        assert isinstance(result, AppendResult), result
        assert (result.stream, result.versions) == (stream, [0, 1])
    assert isinstance(results[-1], ConcurrencyError)  # refused alone: the others landed
    for stream in streams[:-1]:
        assert [e.data["n"] for e in await store.read_stream(workspace, stream)] == [1, 2]


async def test_an_append_made_alone_goes_at_once_by_itself(store: Counted, workspace: str) -> None:
    coalescer = AppendCoalescer(store.append_batch)
    for i in range(3):  # each awaited before the next is made
        result = await coalescer.call(AppendRequest(workspace, f"s{i}", [ev()]))
        assert isinstance(result, AppendResult) and result.stream == f"s{i}"
    assert store.batches == [1, 1, 1]


async def test_appends_made_while_a_batch_is_out_go_in_the_next(
    store: Counted, workspace: str
) -> None:
    coalescer = AppendCoalescer(store.append_batch)
    first = asyncio.ensure_future(coalescer.call(AppendRequest(workspace, "a", [ev()])))
    await asyncio.sleep(0)  # the first batch is sent
    later = [coalescer.call(AppendRequest(workspace, s, [ev()])) for s in ("b", "c")]
    results = await asyncio.gather(first, *later)
    assert [r.stream for r in results if isinstance(r, AppendResult)] == ["a", "b", "c"]
    assert store.batches == [1, 2]


async def test_an_error_of_one_request_goes_to_its_caller_only(
    store: Counted, workspace: str
) -> None:
    # not an InvalidEvent but a programming error (an event_id that is no UUID), met
    # after the batch's first script call (100 events) was sent
    broken = NewEvent(type="A", data={}, event_id="not-a-uuid")  # type: ignore[arg-type]
    coalescer = AppendCoalescer(store.append_batch)
    requests = [AppendRequest(workspace, f"s{i}", [ev(i)], NO_STREAM) for i in range(150)]
    requests[120] = AppendRequest(workspace, "broken", [broken])

    results = await asyncio.gather(*map(coalescer.call, requests), return_exceptions=True)

    assert store.batches == [150]
    assert isinstance(results[120], AttributeError)
    landed = [r for r in results if isinstance(r, AppendResult)]
    assert len(landed) == 149 and not any(r.deduplicated for r in landed)
    assert len(await store.read_log(workspace, limit=1000)) == 149  # each once


class Unreachable:
    def __init__(self) -> None:
        self.calls = 0

    async def append_batch(
        self, requests: Sequence[AppendRequest]
    ) -> list[AppendResult | Exception]:
        self.calls += 1
        await asyncio.sleep(0)
        raise RedisConnectionError("the server went away")


async def test_what_fails_a_batch_is_raised_to_every_caller_in_it(workspace: str) -> None:
    store = Unreachable()
    coalescer = AppendCoalescer(store.append_batch)
    calls = [coalescer.call(AppendRequest(workspace, f"s{i}", [ev()])) for i in range(3)]
    failed = await asyncio.gather(*calls, return_exceptions=True)
    assert store.calls == 1
    assert all(isinstance(e, RedisConnectionError) for e in failed), failed


async def test_a_caller_cancelled_before_its_batch_is_sent_takes_its_request_out(
    store: Counted, workspace: str
) -> None:
    coalescer = AppendCoalescer(store.append_batch)
    calls = [
        asyncio.ensure_future(coalescer.call(AppendRequest(workspace, s, [ev()])))
        for s in ("a", "b", "c")
    ]
    await asyncio.sleep(0)  # each has made its request; the batch goes at the next step
    calls[1].cancel()
    done = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(done[1], asyncio.CancelledError)
    assert [r.stream for r in (done[0], done[2]) if isinstance(r, AppendResult)] == ["a", "c"]
    assert store.batches == [2]
    assert [e.stream for e in await store.read_log(workspace)] == ["a", "c"]


def test_requests_a_stopped_loop_never_sent_do_not_stall_the_next_loop(
    redis_url: str, workspace: str
) -> None:
    store = RedisEventStore.from_url(redis_url)
    coalescer = AppendCoalescer(store.append_batch)

    async def append(stream: str) -> AppendResult | Exception:
        return await coalescer.call(AppendRequest(workspace, stream, [ev()]))

    stopped = asyncio.new_event_loop()
    stopped.run_until_complete(asyncio.sleep(0))
    left = stopped.create_task(append("never"))
    stopped.call_soon(stopped.stop)
    stopped.run_forever()  # the task made its request; the loop stops before sending it
    assert not left.done()
    stopped.close()

    async def later() -> AppendResult | Exception:
        try:
            return await asyncio.wait_for(append("next"), 10)
        finally:
            await store.close()

    result = asyncio.run(later())
    assert isinstance(result, AppendResult) and result.stream == "next"
