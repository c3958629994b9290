"""Checkpoint notices: the projector says when a view moved, so readers wait without polling.

After every batch it applied, the writer of the views publishes the new
checkpoints on the workspace's pub/sub channel (``keys.checkpoints_channel``),
and a view dropped for a rebuild as checkpoint 0. A process that waits for a
position (``min_position``, ``?wait``) subscribes to each workspace it waits
on, all of them on one connection, and wakes its waiters when a notice says
their position is reached: at once, and with no read of the view per waiter.

Pub/sub is best effort: a notice published while the subscription reconnects
is lost. So a waiter also reads the checkpoint itself when no notice has come
for ``fallback_s``: a lost notice costs latency, never a wrong answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import msgspec
import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from stageline.events.keys import checkpoints_channel

__all__ = ["FALLBACK_S", "IDLE_S", "Notices", "Watch"]

log = structlog.get_logger("stageline.projections")

FALLBACK_S = 0.1
"""How long a waiter waits for a notice before it reads the checkpoint itself."""
IDLE_S = 5.0
"""How long a workspace nobody waits on stays subscribed, for the next waiter."""

_decode = msgspec.json.Decoder(dict[str, int]).decode


class Watch:
    """What one process knows of a workspace's checkpoints, while it waits on them."""

    def __init__(self) -> None:
        self.positions: dict[str, int] = {}
        self.subscribed = asyncio.Event()
        self.users = 0
        self.idle_since = time.monotonic()
        self._moved = asyncio.Event()

    def note(self, positions: Mapping[str, int]) -> None:
        """Take ``positions`` as the checkpoints now, and wake whoever waits for a move.

        Taken as they are, not only when higher: a view dropped for a rebuild
        goes back to 0. A read that answers after a later notice can set a
        checkpoint back for a while; its waiters then wait for the next notice.
        """
        changed = False
        for name, position in positions.items():
            if self.positions.get(name) != position:
                self.positions[name] = position
                changed = True
        if changed:
            self._moved.set()
            self._moved = asyncio.Event()

    async def moved(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the next change; whether one came."""
        moved = self._moved
        try:
            async with asyncio.timeout(timeout):
                await moved.wait()
        except TimeoutError:
            return False
        return True


class Notices:
    """Publishes a workspace's checkpoint notices, and waits on them.

    ``read(workspace, projection)`` reads a checkpoint from the views: once when a
    wait starts, and whenever no notice came for ``fallback_s``.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        read: Callable[[str, str], Awaitable[int]],
        *,
        fallback_s: float = FALLBACK_S,
        idle_s: float = IDLE_S,
    ) -> None:
        self.client = client
        self.fallback_s = fallback_s
        self.idle_s = idle_s
        self._read = read
        self._watches: dict[str, Watch] = {}
        self._channels: dict[str, str] = {}  # channel -> workspace
        self._pubsub: Any = None  # redis-py's PubSub, made on the first wait
        self._subscribing = asyncio.Lock()  # its first subscribe picks its connection
        self._listener: asyncio.Task[None] | None = None

    async def publish(self, workspace: str, positions: Mapping[str, int]) -> None:
        """Say that the views of ``workspace`` reached ``positions`` (projection -> checkpoint).

        Best effort, like the subscription: a failure is logged, not raised, since
        the writes it reports are done and waiters read for themselves in the end.
        """
        try:
            await self.client.publish(
                checkpoints_channel(workspace), msgspec.json.encode(positions)
            )
        except RedisError as exc:
            log.warning("views.notice_failed", workspace=workspace, error=str(exc))

    async def wait_for(
        self, workspace: str, projection: str, position: int, timeout_s: float
    ) -> bool:
        """Wait until ``projection`` has applied ``position``; False if ``timeout_s`` passed first."""
        deadline = time.monotonic() + timeout_s
        async with self.watching(workspace) as watch:
            watch.note({projection: await self._read(workspace, projection)})
            while watch.positions[projection] < position:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                if not await watch.moved(min(left, self.fallback_s)):
                    watch.note({projection: await self._read(workspace, projection)})
            return True

    @contextlib.asynccontextmanager
    async def watching(self, workspace: str) -> AsyncIterator[Watch]:
        """The workspace's ``Watch``, subscribed to its notices while the block runs.

        Waits (up to ``fallback_s``) for the subscription to be confirmed, so that a
        read made inside the block is followed by every notice published after it.
        """
        watch = self._watches.get(workspace)
        if watch is None:
            watch = self._watches[workspace] = Watch()
            await self._subscribe(workspace, watch)
        watch.users += 1
        try:
            with contextlib.suppress(TimeoutError):  # not confirmed: the fallback reads cover it
                async with asyncio.timeout(self.fallback_s):
                    await watch.subscribed.wait()
            yield watch
        finally:
            watch.users -= 1
            if not watch.users:
                watch.idle_since = time.monotonic()

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        if self._pubsub is not None:
            await self._pubsub.aclose()
        self._watches.clear()

    async def _subscribe(self, workspace: str, watch: Watch) -> None:
        if self._pubsub is None:
            self._pubsub = self.client.pubsub()
        channel = checkpoints_channel(workspace)
        try:
            async with self._subscribing:
                await self._pubsub.subscribe(channel)
        except RedisError as exc:
            # its waiters read for themselves; the next wait after them subscribes again
            log.warning("views.notices_unavailable", workspace=workspace, error=str(exc))
            if self._watches.get(workspace) is watch:
                del self._watches[workspace]
            return
        self._channels[channel] = workspace
        if self._listener is None or self._listener.done():
            self._listener = asyncio.create_task(self._listen())

    async def _listen(self) -> None:
        """Hand each notice to its workspace's watch; unsubscribe from workspaces left idle.

        Ends when no workspace is left; the next subscription starts it again.
        """
        swept = time.monotonic()
        while self._watches:
            try:
                message = await self._pubsub.get_message(timeout=min(1.0, self.idle_s))
            except RedisError as exc:
                # redis-py reconnects and subscribes again on the next read
                log.warning("views.notices_interrupted", error=str(exc))
                await asyncio.sleep(self.fallback_s)
                continue
            if message is not None:
                self._deliver(message)
            if time.monotonic() - swept >= min(1.0, self.idle_s):
                swept = time.monotonic()
                await self._unsubscribe_idle(swept)

    def _deliver(self, message: dict[str, Any]) -> None:
        channel = message["channel"]  # str from a client that decodes its replies, else bytes
        workspace = self._channels.get(channel if isinstance(channel, str) else channel.decode())
        watch = self._watches.get(workspace) if workspace is not None else None
        if watch is None:
            return
        if message["type"] == "subscribe":
            watch.subscribed.set()
        elif message["type"] == "message":
            try:
                watch.note(_decode(message["data"]))
            except msgspec.DecodeError:  # not a notice: someone else's message on our channel
                log.warning("views.notice_unreadable", workspace=workspace)

    async def _unsubscribe_idle(self, now: float) -> None:
        idle = [
            ws
            for ws, watch in self._watches.items()
            if not watch.users and now - watch.idle_since > self.idle_s
        ]
        for workspace in idle:
            del self._watches[workspace]
            del self._channels[checkpoints_channel(workspace)]
        if idle:
            with contextlib.suppress(RedisError):  # the server dropped them with the connection
                await self._pubsub.unsubscribe(*(checkpoints_channel(ws) for ws in idle))
