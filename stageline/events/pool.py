"""A Redis connection pool whose callers wait for a free connection instead of failing."""

from __future__ import annotations

import asyncio
import collections
import functools
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError
from redis.exceptions import TimeoutError as RedisTimeoutError

MAX_CONNECTIONS = 100
"""Connections one pool opens at most: redis-py 8's default (7.x and older: 2**31)."""
WAIT_SECONDS = 10.0
"""Longest a command waits for a connection when all of its pool's are busy."""


class TimedWrites:
    """A connection (mixed into redis-py's) whose writes are bounded by ``asyncio.timeout``.

    With a socket timeout set, redis-py bounds each write with ``asyncio.wait_for``,
    which on Python 3.11 starts a task per command. Here the same write is bounded by
    ``asyncio.timeout``, which starts nothing; a write that does not finish in time
    still raises redis-py's ``TimeoutError`` with the connection closed. Connecting
    (the handshake reads with the socket timeout) goes as redis-py sends. A PING on a
    unix socket, in CPU per command: 103 µs through redis-py's pool with a timeout, 88
    through this one (61 with no timeout at all); on uvloop 82 and 72.
    """

    socket_timeout: float | None
    is_connected: bool

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        timeout = self.socket_timeout
        if not timeout or not self.is_connected:
            # connecting reads the handshake's replies with the socket timeout: redis-py's way
            await super().send_packed_command(command, check_health)  # type: ignore[misc]
            return
        if check_health:
            await self.check_health()  # type: ignore[attr-defined]
        # with its timeout unset redis-py writes without wait_for; only the write runs so,
        # and the connection is its caller's alone meanwhile, as every command's is
        self.socket_timeout = None
        try:
            async with asyncio.timeout(timeout):
                await super().send_packed_command(command, False)  # type: ignore[misc]
        except TimeoutError:  # redis-py closed the connection on the cancellation
            raise RedisTimeoutError("Timeout writing to socket") from None
        finally:
            if self.socket_timeout is None:  # else set meanwhile (maintenance notifications)
                self.socket_timeout = timeout


@functools.cache
def timed_writes(connection_class: type[Any]) -> type[Any]:
    """``connection_class`` with ``TimedWrites`` mixed in (itself if it has it already)."""
    if issubclass(connection_class, TimedWrites):
        return connection_class
    return type(f"TimedWrites{connection_class.__name__}", (TimedWrites, connection_class), {})


class WaitingPool(aioredis.ConnectionPool):
    """redis-py's pool (at most ``MAX_CONNECTIONS`` unless told otherwise), except that a
    command finding them all busy waits for one, up to ``wait_s``, instead of failing at
    once with "Too many connections" (500 concurrent appends on one store: 400 failed so).

    Waiting commands get freed connections in the order they came; a new command does
    not take a connection while one waits. redis-py's ``BlockingConnectionPool`` waits
    too, but costs ~15 µs more on every command (25 against 10 µs to take and release a
    connection, measured here), and a command it wakes loses the freed connection to any
    task that asks again first.

    Its connections are of redis-py's class for the URL with ``TimedWrites`` mixed in.
    """

    def __init__(self, *, wait_s: float = WAIT_SECONDS, **kwargs: Any) -> None:
        kwargs["max_connections"] = kwargs.get("max_connections") or MAX_CONNECTIONS
        kwargs["connection_class"] = timed_writes(
            kwargs.get("connection_class", aioredis.Connection)
        )
        super().__init__(**kwargs)
        self.wait_s = wait_s
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._woken = 0
        """Waiters woken by a release that have not taken their connection yet."""

    @classmethod
    def replacing(cls, pool: aioredis.ConnectionPool, **kwargs: Any) -> WaitingPool:
        """A pool making the same connections as ``pool`` (which has opened none yet)."""
        return cls(connection_class=pool.connection_class, **pool.connection_kwargs, **kwargs)

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        if not self._waiters and len(self._in_use_connections) + self._woken < self.max_connections:
            try:
                return await super().get_connection()
            except MaxConnectionsError:
                pass
        return await self._wait()

    async def _wait(self) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s
        enqueue = self._waiters.append
        while True:
            waiter: asyncio.Future[None] = loop.create_future()
            enqueue(waiter)
            enqueue = self._waiters.appendleft  # lost its connection after all: first in line
            try:
                async with asyncio.timeout(deadline - loop.time()):
                    await waiter
            except BaseException as exc:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                elif waiter.done() and not waiter.cancelled():
                    self._woken -= 1  # woken, then timed out or cancelled: next in line
                    self._wake()
                if isinstance(exc, TimeoutError):
                    raise RedisConnectionError(
                        f"no connection free within {self.wait_s:g}s "
                        f"(all {self.max_connections} busy)"
                    ) from None
                raise
            self._woken -= 1
            try:
                return await super().get_connection()
            except MaxConnectionsError:
                pass

    async def release(self, connection: Any) -> None:
        try:
            await super().release(connection)
        finally:
            self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self._woken += 1
                return
