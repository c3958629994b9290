"""Durable delayed delivery: a command comes back on its channel at a set time.

Entries live in one Redis sorted set scored by due time, so a delay survives
the death of the worker that set it: any worker's scheduler moves due entries
to their channels, atomically, with a Lua script.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import redis.asyncio as aioredis
import structlog

from stageline.events import keys

log = structlog.get_logger(__name__)

_MOVE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  local sep = string.find(member, '\\0', 1, true)
  local channel = string.sub(member, 1, sep - 1)
  redis.call('XADD', channel, 'MAXLEN', '=', ARGV[3], 'ACKED', '*', '__data__', string.sub(member, sep + 1))
  redis.call('ZREM', KEYS[1], member)
end
return #due
"""


def scheduled_entry(channel: str, payload: bytes) -> bytes:
    """The scheduled set's member for ``payload`` due on ``channel``."""
    return channel.encode() + b"\0" + payload


class Scheduler:
    """Puts held commands on their channels once they are due (``CommandBus.publish`` holds
    them, as ``scheduled_entry`` members of the set)."""

    def __init__(self, client: aioredis.Redis, *, channel_maxlen: int, poll_seconds: float = 0.1):
        self.client = client
        self.channel_maxlen = channel_maxlen
        self.poll_seconds = poll_seconds
        self._move = client.register_script(_MOVE_DUE)

    async def move_due(self, now: float | None = None, limit: int = 500) -> int:
        """Move what is due now; returns how many entries were moved."""
        moved = await self._move(
            keys=[keys.SCHEDULED],
            args=[now if now is not None else time.time(), limit, self.channel_maxlen],
        )
        return int(moved)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                moved = await self.move_due()
            except Exception as exc:  # Redis down: keep trying, the entries are safe in Redis
                log.warning("scheduler.move_failed", error=str(exc))
                moved = 0
            if moved == 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.poll_seconds)
