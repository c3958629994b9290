"""The connection pool every stageline Redis client uses: more concurrent commands than
connections wait for one, for a bounded time, instead of failing at once; a write is
bounded by the socket timeout without starting a task."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import hiredis
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from stageline.events import NO_STREAM, NewEvent
from stageline.events.pool import WaitingPool
from stageline.events.redis_store import RedisEventStore
from stageline.projections.falkordb_views import FalkorDBViews


@pytest.fixture
async def small(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A client of one connection, whose commands wait 0.3 s at most for it."""
    client = aioredis.Redis.from_pool(
        WaitingPool.from_url(redis_url, max_connections=1, wait_s=0.3)
    )
    yield client
    await client.aclose()


async def test_commands_beyond_the_connections_wait_for_one(redis_url: str) -> None:
    client = aioredis.Redis.from_pool(WaitingPool.from_url(redis_url, max_connections=2))
    try:
        # each holds its connection ~50 ms: ten of them need five turns of the two
        replies = await asyncio.gather(*(client.blpop(["sl-test-empty"], 0.05) for _ in range(10)))
    finally:
        await client.aclose()
    assert replies == [None] * 10


async def test_a_command_waits_at_most_its_pools_wait(small: aioredis.Redis) -> None:
    holder = asyncio.create_task(small.blpop(["sl-test-empty"], 2))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    with pytest.raises(RedisConnectionError, match=r"no connection free within 0\.3s"):
        await small.ping()
    assert time.monotonic() - started < 1.5  # the holder keeps its connection for 2 s
    holder.cancel()
    with pytest.raises(asyncio.CancelledError):
        await holder


async def test_a_cancelled_waiter_does_not_hold_up_the_next(redis_url: str) -> None:
    client = aioredis.Redis.from_pool(WaitingPool.from_url(redis_url, max_connections=1, wait_s=5))
    try:
        holder = asyncio.create_task(client.blpop(["sl-test-empty"], 0.1))
        await asyncio.sleep(0.02)
        first = asyncio.create_task(client.ping())
        second = asyncio.create_task(client.ping())
        await asyncio.sleep(0.02)
        first.cancel()

        # the holder frees the connection after 0.1 s; second's own wait is 5 s
        assert await asyncio.wait_for(second, 2) is True
        assert await holder is None
        with pytest.raises(asyncio.CancelledError):
            await first
    finally:
        await client.aclose()


async def test_a_waiter_gets_a_connection_its_holder_keeps_asking_for(
    small: aioredis.Redis,
) -> None:
    stop = False

    async def busy() -> int:
        sent = 0
        while not stop:
            await small.ping()  # releases and at once asks again, without yielding between
            sent += 1
        return sent

    holder = asyncio.create_task(busy())
    await asyncio.sleep(0.05)
    assert await small.ping() is True  # within its 0.3 s wait
    stop = True
    assert await holder > 0


async def test_store_and_views_take_bursts_larger_than_their_pools(
    redis_url: str, workspace: str
) -> None:
    store = RedisEventStore.from_url(redis_url)
    views = FalkorDBViews.from_url(redis_url)
    try:
        results = await asyncio.gather(
            *(
                store.append(workspace, f"s-{i}", [NewEvent(type="A", data={})], NO_STREAM)
                for i in range(300)
            )
        )
        runs = await asyncio.gather(*(views.get_run(workspace, f"r-{i}") for i in range(300)))
    finally:
        await store.close()
        await views.close()
    assert len({r.position for r in results}) == 300  # every one appended
    assert runs == [None] * 300


async def test_a_waiter_cancelled_once_woken_hands_the_connection_on(redis_url: str) -> None:
    pool = WaitingPool.from_url(redis_url, max_connections=1, wait_s=5)
    try:
        held = await pool.get_connection()
        woken = asyncio.create_task(pool.get_connection())
        next_in_line = asyncio.create_task(pool.get_connection())
        await asyncio.sleep(0.02)  # both waiting, in that order
        await pool.release(held)  # wakes the first...
        woken.cancel()  # ...which is cancelled before it runs

        conn = await asyncio.wait_for(next_in_line, 1)  # long before its own 5 s wait

        await pool.release(conn)
        with pytest.raises(asyncio.CancelledError):
            await woken
    finally:
        await pool.disconnect()


async def test_commands_with_a_socket_timeout_start_no_task(redis_url: str) -> None:
    # redis-py bounds a write with asyncio.wait_for, a task per command on Python 3.11
    client = aioredis.Redis.from_pool(WaitingPool.from_url(redis_url, socket_timeout=5))
    loop = asyncio.get_running_loop()
    started: list[Any] = []
    before = loop.get_task_factory()

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        started.append(coro)
        return asyncio.Task(coro, loop=loop, **kwargs)

    try:
        await client.ping()  # connects
        loop.set_task_factory(factory)
        try:
            replies = [await client.ping() for _ in range(20)]
        finally:
            loop.set_task_factory(before)
    finally:
        await client.aclose()
    assert replies == [True] * 20
    assert started == []


@pytest.fixture
async def deaf(tmp_path: Path) -> AsyncIterator[tuple[str, asyncio.Event]]:
    """A unix socket server that answers a connection's handshake, then reads nothing more
    once a SET begins: its URL, and an event set then."""
    deafened = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests = hiredis.Reader()
        seen = b""
        while data := await reader.read(65536):
            seen = seen[-16:] + data  # the marker may span two reads
            if b"$3\r\nSET\r\n" in seen:
                deafened.set()
                await asyncio.Event().wait()
            requests.feed(data)
            while requests.gets() is not False:
                writer.write(b"+OK\r\n")

    path = tmp_path / "deaf.sock"
    server = await asyncio.start_unix_server(serve, path)
    yield f"unix://{path}", deafened
    server.close()


BIG_SET = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$%d\r\n%b\r\n" % (8 << 20, b"x" * (8 << 20))
"""Far more than the socket buffers hold (~0.5 MB): its write waits for the server to read."""


async def test_a_write_that_does_not_finish_in_time_fails_and_closes_the_connection(
    deaf: tuple[str, asyncio.Event],
) -> None:
    url, deafened = deaf
    pool = WaitingPool.from_url(url, socket_timeout=0.3)
    try:
        conn = await pool.get_connection()
        started = time.monotonic()
        with pytest.raises(RedisTimeoutError, match="Timeout writing to socket"):
            async with asyncio.timeout(5):  # fails, not hangs, if the write is not bounded
                await conn.send_packed_command(BIG_SET)
        assert 0.25 < time.monotonic() - started < 3
        assert deafened.is_set()
        assert not conn.is_connected
        assert conn.socket_timeout == 0.3  # for its next commands
        await pool.release(conn)
    finally:
        await pool.disconnect()


async def test_a_write_cancelled_while_it_waits_closes_the_connection(
    deaf: tuple[str, asyncio.Event],
) -> None:
    url, deafened = deaf
    pool = WaitingPool.from_url(url, socket_timeout=5)
    try:
        conn = await pool.get_connection()
        write = asyncio.create_task(conn.send_packed_command(BIG_SET))
        await asyncio.wait_for(deafened.wait(), 5)
        await asyncio.sleep(0.05)
        write.cancel()
        with pytest.raises(asyncio.CancelledError):
            await write
        assert not conn.is_connected
        assert conn.socket_timeout == 5
        await pool.release(conn)
    finally:
        await pool.disconnect()
