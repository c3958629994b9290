"""Stage channels on the broker Redis: consumer groups, and command hand-offs in one step."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence

import redis.asyncio as aioredis
import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT

from stageline.actors import commands
from stageline.actors.commands import StageCommand
from stageline.actors.schedule import scheduled_entry
from stageline.errors import Unavailable
from stageline.events import keys

log = structlog.get_logger(__name__)

DATA_FIELD = "__data__"  # FastStream's field name, so its tooling can read our entries

# One atomic step: the commands onto their channels, the delayed ones into the scheduled
# set, and only then the acknowledgement of the entries they follow from. A failing call
# stops the script, so an entry is never acknowledged unless all it hands on is written.
# KEYS: the channels written, then (as ARGV says) the scheduled set, the channel acked.
# ARGV: maxlen, n, n x (channel's KEYS index, payload), m, [set's index, m x (due, entry)],
#       [acked channel's index, group, entry ids...]
_HAND_OFF = """
local maxlen = ARGV[1]
local i = 3
for _ = 1, tonumber(ARGV[2]) do
  redis.call('XADD', KEYS[tonumber(ARGV[i])], 'MAXLEN', '=', maxlen, 'ACKED', '*',
             '__data__', ARGV[i + 1])
  i = i + 2
end
local m = tonumber(ARGV[i])
i = i + 1
if m > 0 then
  local key = KEYS[tonumber(ARGV[i])]
  i = i + 1
  for _ = 1, m do
    redis.call('ZADD', key, ARGV[i], ARGV[i + 1])
    i = i + 2
  end
end
if ARGV[i] then
  return redis.call('XACK', KEYS[tonumber(ARGV[i])], ARGV[i + 1], unpack(ARGV, i + 2))
end
return 0
"""

# Delete a group's consumers idle longer than ARGV[2] ms with nothing pending, in one step
# with the check: a consumer deleted with entries pending would lose them.
# KEYS: the channel. ARGV: the group, the idle time (ms).
_FORGET_IDLE = """
local removed = 0
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local info = {}
  for i = 1, #consumer, 2 do
    info[consumer[i]] = consumer[i + 1]
  end
  if info['pending'] == 0 and info['idle'] > tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    removed = removed + 1
  end
end
return removed
"""


@contextlib.contextmanager
def broker_unavailable() -> Iterator[None]:
    """Raise a broker that cannot be reached as ``Unavailable`` naming it, for a caller
    that has written nothing yet (else the API's 503 would blame the store)."""
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError) as exc:
        log.warning("bus.unavailable", error=f"{type(exc).__name__}: {exc}")
        raise Unavailable(
            "the broker (the stage channels) could not be reached; nothing was written; "
            "retry later",
            dependency="broker",
            reason=type(exc).__name__,
        ) from exc


class CommandBus:
    """Writes stage commands to their actors' channels, many per round trip.

    Channels are trimmed to ``maxlen`` entries, but only of entries every
    consumer group has acknowledged (Redis 8.2 ``ACKED``): a backlog is never cut.
    """

    def __init__(self, client: aioredis.Redis, *, maxlen: int = 10_000) -> None:
        self.client = client
        self.maxlen = maxlen
        self._hand_off = client.register_script(_HAND_OFF)
        self._forget_idle = client.register_script(_FORGET_IDLE)

    async def publish(
        self,
        items: Sequence[tuple[str, StageCommand]],
        *,
        scheduled: Sequence[tuple[float, str, bytes]] = (),
        ack: tuple[str, Sequence[bytes]] | None = None,
    ) -> None:
        """Put each ``(actor, command)`` on the actor's channel, each ``(due, channel,
        payload)`` in the scheduler, then acknowledge ``ack``'s ``(actor, entry ids)``.

        One round trip and one atomic step: the entries are acknowledged only
        once everything that follows from them is written.
        """
        acked = ack is not None and len(ack[1]) > 0
        if not items and not scheduled and not acked:
            return
        if len(items) == 1 and not scheduled and not acked:  # a plain XADD costs the server less
            actor, command = items[0]
            await self.client.execute_command(
                "XADD", keys.stage_channel(actor), "MAXLEN", "=", self.maxlen, "ACKED", "*",
                DATA_FIELD, commands.encode(command),
            )  # fmt: skip
            return
        slots: dict[str, int] = {}
        args: list[EncodableT] = [self.maxlen, len(items)]
        for actor, command in items:
            channel = keys.stage_channel(actor)
            args += (slots.setdefault(channel, len(slots) + 1), commands.encode(command))
        args.append(len(scheduled))
        if scheduled:
            args.append(slots.setdefault(keys.SCHEDULED, len(slots) + 1))
            for due, channel, payload in scheduled:
                args += (due, scheduled_entry(channel, payload))
        if ack is not None and acked:
            actor, entry_ids = ack
            args += (slots.setdefault(keys.stage_channel(actor), len(slots) + 1),)
            args += (keys.stage_group(actor), *entry_ids)
        await self._hand_off(keys=list(slots), args=args)

    async def hand_on(self, items: Sequence[tuple[str, StageCommand]], *, after: str) -> bool:
        """``publish(items)`` for commands that follow from an append already recorded:
        whether they were written. A broker that fails is not the caller's error then,
        whose append stands: one ``bus.hand_on_failed`` warning, and the reconciler hands
        the run on once it has been idle for ``STAGELINE_RECONCILE_AFTER_SECONDS``."""
        try:
            await self.publish(items)
        except RedisError as exc:
            log.warning(
                "bus.hand_on_failed",
                after=after,
                runs=sorted({command.run_id for _, command in items}),
                error=f"{type(exc).__name__}: {exc}",
            )
            return False
        return True

    async def ensure_groups(self, actors: Iterable[str]) -> list[str]:
        """Create each actor's consumer group at 0, so entries written before it are not skipped.

        Returns the actors whose group did not exist (new, or lost with its stream).
        """
        return [
            actor
            for actor in actors
            if await self.ensure_group(keys.stage_channel(actor), keys.stage_group(actor))
        ]

    async def ensure_group(self, channel: str, group: str) -> bool:
        """Create ``channel``'s consumer ``group`` at 0; whether it did not exist."""
        try:
            await self.client.xgroup_create(channel, group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
            return False
        return True

    async def forget_idle_consumers(self, channel: str, group: str, idle_ms: int) -> int:
        """Delete ``group``'s consumers that have nothing pending and have not read for
        more than ``idle_ms``: those of workers killed before they could leave. How many.

        A worker that was only silent (frozen) and reads again is back in the group
        at its next read; it had nothing pending to lose.
        """
        return int(await self._forget_idle(keys=[channel], args=[group, idle_ms]))
