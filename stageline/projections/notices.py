"""Checkpoint notices: the projector says when a view moved, so readers wait without polling.

With every batch it writes, the writer of the views publishes the batch's
checkpoints on the workspace's pub/sub channel (``keys.checkpoints_channel``),
in the same pipeline, after the writes; and a view dropped for a rebuild as
checkpoint 0. A process that waits for a position (``min_position``,
``?wait``) subscribes to each workspace it waits on, all of them on one
connection, and a waiter reads the checkpoint again when a notice says its
position is reached: at once, instead of polling.

A notice only wakes a waiter; the checkpoint it then reads decides, so a late
or stale notice (a rebuild dropped the view meanwhile) cannot let a read
through early. Until the subscription is confirmed, a waiter polls as it
would without notices (``POLL_S``); so it does for good where the server
refuses the channels (an ACL without them). Pub/sub is best effort: a notice
published while the subscription reconnects is lost. So a waiter also reads
the checkpoint when no notice has come for ``fallback_s``: a lost notice costs
latency, never a wrong answer.
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
from redis.exceptions import NoPermissionError, RedisError

from stageline.events.keys import checkpoints_channel

__all__ = ["FALLBACK_S", "IDLE_S", "POLL_S", "Notices", "Watch"]

log = structlog.get_logger("stageline.projections")

FALLBACK_S = 0.1
"""How long a waiter waits for a notice before it reads the checkpoint anyway."""
POLL_S = (0.001, 0.01)
"""Until its workspace's subscription is confirmed (or if the server refuses it), a waiter
polls: first after this long, doubling up to the second."""
IDLE_S = 5.0
"""How long a workspace nobody waits on stays subscribed, for the next waiter."""

_decode = msgspec.json.Decoder(dict[str, int]).decode


def _text(channel: str | bytes) -> str:
    """A channel's name: str from a client that decodes its replies, else bytes."""
    return channel if isinstance(channel, str) else channel.decode()


class Watch:
    """The checkpoint notices of one workspace, while this process waits on them."""

    def __init__(self) -> None:
        self.positions: dict[str, int] = {}
        """Each projection's checkpoint as the latest notice gave it."""
        self.notices = 0
        """How many notices came: a waiter tells by it whether one came meanwhile."""
        self.subscribed = asyncio.Event()
        self.reads: dict[str, tuple[float, int, bool, asyncio.Future[int]]] = {}
        """Per projection, the last read of its checkpoint: when it began, after how many
        notices, whether the subscription was confirmed then, and its answer."""
        self.users = 0
        self.idle_since = time.monotonic()
        self._moved = asyncio.Event()

    def note(self, positions: Mapping[str, int]) -> None:
        """Take a notice's ``positions`` (as they are: a dropped view goes back to 0)."""
        self.positions.update(positions)
        self.notices += 1
        self._moved.set()
        self._moved = asyncio.Event()

    async def moved(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the next notice; whether one came."""
        moved = self._moved
        try:
            async with asyncio.timeout(timeout):
                await moved.wait()
        except TimeoutError:
            return False
        return True

    def reached(self, projection: str, position: int, since: int) -> bool:
        """Whether a notice that came after the ``since``-th says ``position`` is reached."""
        return self.notices > since and self.positions.get(projection, 0) >= position


class Notices:
    """Publishes a workspace's checkpoint notices, and waits on them.

    ``read(workspace, projection)`` reads a checkpoint from the views: when a wait
    starts, when a notice says the position is reached, and when no notice came
    for ``fallback_s``. One task reads the subscription; subscribing runs in tasks
    of its own, so a waiter that is cancelled or times out leaves it consistent.
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
        self._tasks: set[asyncio.Task[None]] = set()  # subscriptions under way
        self._listener: asyncio.Task[None] | None = None
        self._closed = False
        self._refused = False  # the server refuses the channels: poll, and stop asking

    @staticmethod
    def command(workspace: str, positions: Mapping[str, int]) -> tuple[str, str, bytes]:
        """The command that publishes ``positions``, for a pipeline of the writes they follow:
        Redis runs it once the writes before it answered (applied or refused: a notice
        only wakes the waiters, who read the checkpoints)."""
        return ("PUBLISH", checkpoints_channel(workspace), msgspec.json.encode(positions))

    async def publish(self, workspace: str, positions: Mapping[str, int]) -> None:
        """Say that the views of ``workspace`` reached ``positions`` (projection -> checkpoint).

        Best effort, like the subscription: a failure is logged, not raised, since
        the writes it reports are done and waiters read for themselves in the end.
        """
        try:
            await self.client.execute_command(*self.command(workspace, positions))
        except NoPermissionError as exc:
            self.refused(exc)
        except RedisError as exc:
            log.warning("views.notice_failed", workspace=workspace, error=str(exc))

    def refused(self, error: Exception) -> None:
        """The server refused the channels (an ACL without them): log it once, and stop
        subscribing; waits poll the checkpoint from now on."""
        if not self._refused:
            self._refused = True
            log.warning("views.notices_refused", error=str(error))

    async def wait_for(
        self, workspace: str, projection: str, position: int, timeout_s: float
    ) -> bool:
        """Wait until ``projection`` has applied ``position``; False if ``timeout_s`` passed first."""
        began = time.monotonic()
        deadline = began + timeout_s
        poll = POLL_S[0]
        async with self.watching(workspace) as watch:
            while True:
                since, heard = watch.notices, watch.subscribed.is_set()
                if await self._checkpoint(workspace, watch, projection, began) >= position:
                    return True
                # a notice that came during the read counts: it may be the one
                while not watch.reached(projection, position, since):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    if heard:  # every notice after the read is heard: wait for one
                        wait_s = self.fallback_s
                    else:
                        wait_s, poll = poll, min(poll * 2, POLL_S[1])
                    if not await watch.moved(min(left, wait_s)):
                        break  # none for a while: read anyway

    async def _checkpoint(
        self, workspace: str, watch: Watch, projection: str, not_before: float
    ) -> int:
        """The projection's checkpoint, read after ``not_before`` and after the latest notice.

        Waiters share a read that meets both, and that began subscribed if the
        watch is subscribed now (so every notice after it is heard): 100 waiters
        woken by one notice cost one read, not 100. A waiter that is cancelled
        leaves the read to the others.
        """
        subscribed = watch.subscribed.is_set()
        last = watch.reads.get(projection)
        if (
            last is None
            or last[3].done()
            or last[0] < not_before
            or last[1] != watch.notices
            or last[2] != subscribed
        ):
            read = asyncio.ensure_future(self._read(workspace, projection))
            read.add_done_callback(lambda f: f.cancelled() or f.exception())  # seen if unawaited
            last = watch.reads[projection] = (time.monotonic(), watch.notices, subscribed, read)
        return await asyncio.shield(last[3])

    @contextlib.asynccontextmanager
    async def watching(self, workspace: str) -> AsyncIterator[Watch]:
        """The workspace's ``Watch``, subscribed to its notices while the block runs.

        The subscription is confirmed (``Watch.subscribed``) a moment later: only the
        notices published after that are heard.
        """
        watch = self._watches.get(workspace)
        if watch is None and not (self._closed or self._refused):
            watch = self._watches[workspace] = Watch()
            channel = checkpoints_channel(workspace)
            self._channels[channel] = workspace
            self._spawn(self._subscribe(workspace, channel, watch))
        elif watch is None:
            watch = Watch()  # one that hears nothing: its waiters poll
        elif self._listener is not None and self._listener.done():
            self._spawn_listener()  # it died: start it again
        watch.users += 1
        try:
            yield watch
        finally:
            watch.users -= 1
            if not watch.users:
                watch.idle_since = time.monotonic()

    async def close(self) -> None:
        """Stop listening and close the subscription's connection."""
        self._closed = True
        self._watches.clear()
        tasks = [*self._tasks, *([self._listener] if self._listener else [])]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)  # redis-py may swallow a cancellation
        if self._pubsub is not None:
            await self._pubsub.aclose()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _spawn_listener(self) -> None:
        if not self._closed and (self._listener is None or self._listener.done()):
            self._listener = asyncio.create_task(self._listen())

    async def _subscribe(self, workspace: str, channel: str, watch: Watch) -> None:
        if self._pubsub is None:
            self._pubsub = self.client.pubsub()
        try:
            async with self._subscribing:
                await self._pubsub.subscribe(channel)
        except Exception as exc:  # its waiters read for themselves; the next wait tries again
            log.warning("views.notices_unavailable", workspace=workspace, error=str(exc))
            if self._watches.get(workspace) is watch:
                del self._watches[workspace]
                self._channels.pop(channel, None)
            return
        self._spawn_listener()

    async def _listen(self) -> None:
        """Hand each notice to its workspace's watch; unsubscribe from workspaces left idle.

        Ends once no workspace is left and the server has confirmed every
        unsubscription; the next subscription starts it again.
        """
        swept = time.monotonic()
        every = min(1.0, self.idle_s)
        while self._watches or self._pubsub.subscribed:
            try:
                message = await self._pubsub.get_message(timeout=every)
                if message is not None:
                    self._deliver(message)
                if time.monotonic() - swept >= every:
                    swept = time.monotonic()
                    await self._unsubscribe_idle(swept)
            except NoPermissionError as exc:  # a subscription refused (an ACL): ask no more
                self.refused(exc)
            except Exception as exc:  # redis-py reconnects and subscribes again on the next read
                log.warning("views.notices_interrupted", error=str(exc))
                await asyncio.sleep(self.fallback_s)

    def _deliver(self, message: dict[str, Any]) -> None:
        workspace = self._channels.get(_text(message["channel"]))
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
            self._channels.pop(checkpoints_channel(workspace), None)
        # and any that a reconnection subscribed again before the server confirmed the end
        left = [c for c in map(_text, self._pubsub.channels) if c not in self._channels]
        if left:
            # the server dropped them with the connection; in order with the subscriptions
            with contextlib.suppress(RedisError):
                async with self._subscribing:
                    await self._pubsub.unsubscribe(*left)
